"""``muscle-pipeline train BUNDLE``: train a bundle with its ``configs/train.json``.

    muscle-pipeline train lower_limb_35 --config train_atlas -o runs/ll35 --set stage=1
    muscle-pipeline train ./my_bundle --set "dataset=[{'image': 'a.nii.gz', 'label': 'a_seg.nii.gz', 'label_map': 'qmritools_leg', 'sides': 'both'}]"

BUNDLE is a shipped bundle name or a bundle folder given as a path. ``--config`` merges more
configs after train.json (a name in the bundle's configs/ folder, or a path). ``--set ID=VALUE``
overrides one config id (nested ids with ``#``, e.g. ``trainer#stage1_iterations=500``); VALUE is
read as a Python literal when it is one, else as a string. Weights go to ``-o`` (default
``runs/<bundle>``), never into the shipped bundle unless you point ``-o`` there.
"""
from __future__ import annotations

import argparse
import ast


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a bundle (its configs/train.json; overrides with --set ID=VALUE)",
        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1])
    parser.add_argument("bundle", metavar="BUNDLE", help="shipped bundle name, or a bundle folder as a path")
    parser.add_argument("-o", "--output-dir", metavar="FOLDER", help="where the weights go (default runs/<bundle>)")
    parser.add_argument("--config", action="append", default=[], metavar="NAME_OR_PATH",
                        help="another config merged after train.json (repeatable), e.g. train_atlas")
    parser.add_argument("--set", action="append", default=[], metavar="ID=VALUE", dest="overrides",
                        help="override a config id (repeatable), e.g. trainer#stage1_iterations=500")
    return parser


def parse_override(text: str) -> tuple[str, object]:
    """``"trainer#lr=0.01"`` -> ``("trainer#lr", 0.01)``; a value that is no Python literal stays a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set wants ID=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def run(args) -> int:
    from muscle_pipeline.api import train

    try:
        overrides = dict(parse_override(t) for t in args.overrides)
    except argparse.ArgumentTypeError as exc:
        from muscle_pipeline.errors import UsageError

        raise UsageError(str(exc)) from None
    out = train(args.bundle, args.output_dir, configs=args.config, **overrides)
    print(f"weights in {out}")
    return 0
