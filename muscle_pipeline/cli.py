"""Command-line interface: ``muscle-pipeline <command> ...``.

Thin by design: each sub-command lives in ``muscle_pipeline/commands/<name>.py`` with two
functions, ``register(subparsers)`` (adds its parser) and ``run(args) -> int`` (calls the
Python API). Adding a command means adding a module there; this file does not change.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from muscle_pipeline import __version__
from muscle_pipeline.errors import MusclePipelineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muscle-pipeline",
        description="Segment individual skeletal muscles in lower-limb MRI/CT and exercise photos.",
    )
    parser.add_argument("--version", action="version", version=f"muscle_pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import muscle_pipeline.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"muscle_pipeline.commands.{info.name}")
        sub_parser = module.register(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MusclePipelineError as exc:
        # Our own errors already name the file and the reason: one line, no traceback.
        print(f"muscle-pipeline: error: {exc}", file=sys.stderr)
        return 1


def run() -> None:
    """The console script's entry point: :func:`main` as the whole process (it ends with the
    command, so start-up may tune the garbage collector: :mod:`muscle_pipeline.startup`)."""
    from muscle_pipeline import startup

    startup.own_process()
    raise SystemExit(main())


if __name__ == "__main__":
    run()
