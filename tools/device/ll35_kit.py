"""Helpers of tools/device/train_lower_limb_35.sh (standard library only, plus torch for ``finish``).

    python3 tools/device/ll35_kit.py rates LOG [--tsv FILE]
    python3 tools/device/ll35_kit.py finish MODELS_DIR --bundle-config inference.json [--muscles ...]

``rates``: iterations per second of every network trained in LOG, read off the training loop's
own lines (``stage 1: iteration 1500/1500 loss 0.41 (52 s)``; seconds since that network's first
iteration, rounded to whole seconds), plus the totals, for calibrating the next run's budget.

``finish``: what a run left in MODELS_DIR, made loadable. A weights file that does not load (cut
by the budget while being written) is removed; muscles without stage-2 weights (the budget ran
out, or only some muscles were asked for) are added to ``untrained`` in cascade.json (the
trainer's own file is kept as cascade.trainer.json), so ``load_cascade(models_dir=...)``
segments the others and warns about them; ``kit_summary.json`` lists what finished.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

LINE = re.compile(r"(?P<what>stage 1|stage 2 (?P<muscle>\w+) patch \([^)]*\)): iteration (?P<it>\d+)/(?P<n>\d+) "
                  r"loss (?P<loss>\S+) \((?P<s>\d+) s\)")


def read_rates(log: Path) -> list[dict]:
    """The last progress line of each network in ``log``: what, muscle, iterations done, planned,
    loss, seconds."""
    last: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if m:
            last[m["what"]] = {"what": m["what"], "muscle": m["muscle"], "iterations": int(m["it"]),
                               "planned": int(m["n"]), "loss": m["loss"], "seconds": int(m["s"])}
    return list(last.values())


def rates(args) -> int:
    rows = read_rates(Path(args.log))
    lines = ["network\titerations\tplanned\tseconds\tit_per_s\tloss"]
    for r in rows:
        ips = r["iterations"] / max(r["seconds"], 1)  # the log rounds to whole seconds: 0 s reads as 1
        lines.append(f"{r['muscle'] or 'stage1'}\t{r['iterations']}\t{r['planned']}\t{r['seconds']}\t{ips:.2f}\t{r['loss']}")
    s1 = [r for r in rows if r["muscle"] is None]
    s2 = [r for r in rows if r["muscle"] is not None]
    for name, group in (("stage 1", s1), ("stage 2", s2)):
        if group:
            it, sec = sum(r["iterations"] for r in group), sum(r["seconds"] for r in group)
            print(f"rates: {name}: {len(group)} network(s), {it} iterations in {sec} s of training loop: "
                  f"{it / max(sec, 1):.2f} it/s")
    if s2:
        done = [r for r in s2 if r["iterations"] == r["planned"]]
        print(f"rates: stage 2: {len(done)} of {len(s2)} started muscles finished their {s2[0]['planned']} iterations")
    if args.tsv:
        Path(args.tsv).write_text("\n".join(lines) + "\n")
    for line in lines:
        print("  " + line.replace("\t", "  "))
    return 0


def finish(args) -> int:
    import torch

    models = Path(args.models_dir)
    structures = list(json.loads(Path(args.bundle_config).read_text())["structures"])
    wanted = args.muscles.split() if args.muscles else structures
    meta_path = models / "cascade.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    broken = []
    for f in sorted(models.glob("*.pt")):
        try:
            torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            print(f"finish: {f.name} does not load ({type(exc).__name__}: {exc}); removed", file=sys.stderr)
            f.unlink()
            broken.append(f.name)
    untrained = list(meta.get("untrained", [])) if meta else []
    finished = [m for m in structures if (models / f"stage2_{m}.pt").exists()]
    missing = [m for m in structures if m not in untrained and m not in finished]
    summary = {
        "stage1": (models / "stage1.pt").exists(),
        "stage2_finished": finished,
        "stage2_missing": missing,
        "stage2_asked": wanted,
        "untrained_by_trainer": untrained,
        "removed_unloadable": broken,
        "cascade_json": meta is not None,
    }
    if meta is not None and missing:
        if not (models / "cascade.trainer.json").exists():
            shutil.copyfile(meta_path, models / "cascade.trainer.json")
        meta["untrained"] = untrained + missing
        meta["unfinished"] = missing
        meta_path.write_text(json.dumps(meta, indent=1))
    (models / "kit_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"finish: stage1.pt {'yes' if summary['stage1'] else 'NO'}; stage 2: {len(finished)} of "
          f"{len(structures) - len(untrained)} muscles"
          + (f"; missing (listed as untrained in cascade.json): {' '.join(missing)}" if missing and meta else "")
          + ("" if meta is not None else "; NO cascade.json"))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rates")
    p.add_argument("log")
    p.add_argument("--tsv")
    p.set_defaults(func=rates)
    p = sub.add_parser("finish")
    p.add_argument("models_dir")
    p.add_argument("--bundle-config", required=True)
    p.add_argument("--muscles", default="", help="the muscles stage 2 was asked for (space-separated; empty: all)")
    p.set_defaults(func=finish)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
