"""Helpers of the GPU kit (standard library only, plus torch for ``finish``; ``device-bundle`` runs
here, in the project's venv, from prepare.sh).

    .venv/bin/python tools/device/ll35_kit.py device-bundle DEVICE_DATA SOURCE_DATA
    python3 tools/device/ll35_kit.py rates LOG [--tsv FILE]
    python3 tools/device/ll35_kit.py plan-stage2 LOG --remaining S --stage1-wall S --muscles N
    python3 tools/device/ll35_kit.py finish MODELS_DIR --bundle-config inference.json [--muscles ...]

``device-bundle``: the bundle the GPU trains, ``DEVICE_DATA/lower_limb_35``: lower_limb_35's
configs with ``bias_correction`` null, and the real DTI calf (train_atlas_calf) already brought to
the stage-2 grid and N4-corrected here (``DEVICE_DATA/qmritools/calf_dti_labeled_half_n4``). N4 is
SimpleITK's, a 52 MB wheel that cannot travel within the tool's 64 MiB; the atlas scenes need no
N4. The trainer's cases are then the same as the shipped bundle's (checked here: every array of
``prepare_case`` is compared, and must be equal), and the weights are used with the shipped
bundle, whose inference runs N4 as its training data had it.

``rates``: iterations per second of every network trained in LOG, read off the training loop's
own lines (``stage 1: iteration 1500/1500 loss 0.41 (52 s)``; seconds since that network's first
iteration, rounded to whole seconds), plus the wall time between networks, for calibrating the
next run's budget.

``plan-stage2``: stage-2 iterations per muscle that fit the remaining budget, from stage 1's
measured seconds per iteration. On a GPU both stages wait for the CPU workers that synthesise the
samples, so a stage-2 iteration of muscle m costs what stage 1 does times the ratio of their
sample costs; summed over the 35 muscles that ratio was 38 on one CPU thread here (stage 1 0.123 s
per sample; stage 2 0.013 s (external rotators) to 0.41 s (sartorius), 4.63 s together).

``finish``: what a run left in MODELS_DIR, made loadable. A weights file that does not load (cut
by the budget while being written) is removed; muscles without stage-2 weights (the budget ran
out, or only some muscles were asked for) are added to ``untrained`` in cascade.json (the
trainer's own file is kept as cascade.trainer.json), so ``load_cascade(models_dir=...)``
segments the others and warns about them; ``kit_summary.json`` lists what finished.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?"
                  r"(?P<what>stage 1|stage 2 (?P<muscle>\w+) patch \([^)]*\)): iteration (?P<it>\d+)/(?P<n>\d+) "
                  r"loss (?P<loss>\S+) \((?P<s>\d+) s\)")
# sum over lower_limb_35's 35 muscles of the stage-2 seconds per sample / stage 1's (measured here)
STAGE2_COST_RATIO = 38.0
N_STRUCTURES = 35


def device_bundle(args) -> int:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.transforms import LoadImage

    from muscle_pipeline.bundle import bundle_path, read_bundle_config
    from muscle_pipeline.cascade.model import prepare_grids
    from muscle_pipeline.cascade.training import load_case, prepare_case

    out, source = Path(args.device_data).resolve(), Path(args.source_data).resolve()
    shipped = bundle_path("lower_limb_35")
    bundle = out / "lower_limb_35"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(shipped / "configs", bundle / "configs")
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["_comment_device_bundle"] = ("written by tools/device/ll35_kit.py device-bundle for the GPU run: "
                                           "bias_correction null, the real calf comes N4-corrected")
    inference["bias_correction"] = None
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))

    calf = json.loads((shipped / "configs" / "train_atlas_calf.json").read_text())
    parser = read_bundle_config(shipped)
    s1, s2 = parser["stage1_spacing"], parser["stage2_spacing"]
    bias = parser.get_parsed_content("bias_correction")
    cascade = {"stage1_spacing": s1, "stage2_spacing": s2, "intensity": parser.get_parsed_content("intensity")}
    folder = out / "qmritools" / "calf_dti_labeled_half_n4"
    folder.mkdir(parents=True, exist_ok=True)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    for entry in calf["real_data"]:
        image_rel = entry["image"].split("'")[1].lstrip("/")  # "$@data_root + '/qmritools/...'"
        label_rel = entry["label"].split("'")[1].lstrip("/")
        image = loader(str(source / image_rel)).float()
        labels = loader(str(source / label_rel))  # its own values: the label map applies there as here
        grids = prepare_grids(image, s1, s2, None, bias, labels=labels)
        new_image, new_label = folder / Path(image_rel).name, folder / Path(label_rel).name
        nib.save(nib.Nifti1Image(np.asarray(grids["image2"][0], np.float32), np.asarray(grids["image2"].affine)),
                 str(new_image))
        nib.save(nib.Nifti1Image(np.asarray(grids["label2"][0]).round().astype(np.int16),
                                 np.asarray(grids["label2"].affine)), str(new_label))
        entry["image"] = f"$@data_root + '/{new_image.relative_to(out)}'"
        entry["label"] = f"$@data_root + '/{new_label.relative_to(out)}'"

        # the trainer's case: shipped bundle + original files vs device bundle + these files
        here = prepare_case(*load_case(str(source / image_rel), str(source / label_rel), entry["label_map"]),
                            {**cascade, "bias_correction": bias})
        there = prepare_case(*load_case(str(new_image), str(new_label), entry["label_map"]),
                             {**cascade, "bias_correction": None})
        for key in ("image2", "image1", "label2", "label1"):
            a, b = torch.as_tensor(here[key]).float(), torch.as_tensor(there[key]).float()
            same_grid = a.shape == b.shape and np.allclose(np.asarray(here[key].affine),
                                                           np.asarray(there[key].affine), atol=1e-4)
            diff = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
            print(f"device-bundle: {entry['name']} {key}: shape {tuple(a.shape)}, same grid {same_grid}, "
                  f"max |difference| {diff:.2e}")
            if not same_grid or diff > (0 if key.startswith("label") else 1e-4):
                print(f"device-bundle: FAIL: {key} differs from the shipped bundle's case", file=sys.stderr)
                return 1
    calf["_comment_device_bundle"] = "the real calf on the stage-2 grid, N4-corrected by tools/device/ll35_kit.py"
    (bundle / "configs" / "train_atlas_calf.json").write_text(json.dumps(calf, indent=4))
    print(f"device-bundle: {bundle} (bias_correction null), calf in {folder}")
    return 0


def read_rates(log: Path) -> list[dict]:
    """The last progress line of each network in ``log``: what, muscle, iterations done, planned,
    loss, seconds of its loop, and ``wall``: seconds since the previous network's last line (a
    stage-2 muscle's whole cost, workers' start and saving included; None for the first)."""
    last: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if m:
            last[m["what"]] = {"what": m["what"], "muscle": m["muscle"], "iterations": int(m["it"]),
                               "planned": int(m["n"]), "loss": m["loss"], "seconds": int(m["s"]),
                               "time": datetime.strptime(m["stamp"], "%Y-%m-%d %H:%M:%S,%f")}
    rows = sorted(last.values(), key=lambda r: r["time"])
    for prev, r in zip([None] + rows, rows):
        r["wall"] = None if prev is None else (r["time"] - prev["time"]).total_seconds()
    return rows


def rates(args) -> int:
    rows = read_rates(Path(args.log))
    lines = ["network\titerations\tplanned\tloop_s\tit_per_s\twall_s\tloss"]
    for r in rows:
        ips = r["iterations"] / max(r["seconds"], 1)  # the log rounds to whole seconds: 0 s reads as 1
        wall = "" if r["wall"] is None else f"{r['wall']:.1f}"
        lines.append(f"{r['muscle'] or 'stage1'}\t{r['iterations']}\t{r['planned']}\t{r['seconds']}\t{ips:.2f}\t"
                     f"{wall}\t{r['loss']}")
    s1 = [r for r in rows if r["muscle"] is None]
    s2 = [r for r in rows if r["muscle"] is not None]
    for name, group in (("stage 1", s1), ("stage 2", s2)):
        if group:
            it, sec = sum(r["iterations"] for r in group), sum(r["seconds"] for r in group)
            print(f"rates: {name}: {len(group)} network(s), {it} iterations in {sec} s of training loop: "
                  f"{it / max(sec, 1):.2f} it/s")
    if s2:
        done = [r for r in s2 if r["iterations"] == r["planned"]]
        walls = [r["wall"] for r in s2[1:] if r["wall"] is not None]
        print(f"rates: stage 2: {len(done)} of {len(s2)} started muscles finished their {s2[0]['planned']} iterations"
              + (f"; wall per muscle after the first (all included) {sum(walls) / len(walls):.1f} s" if walls else ""))
    if args.tsv:
        Path(args.tsv).write_text("\n".join(lines) + "\n")
    for line in lines:
        print("  " + line.replace("\t", "  "))
    return 0


def plan_stage2(args) -> int:
    s1 = [r for r in read_rates(Path(args.log)) if r["muscle"] is None and r["iterations"] == r["planned"]]
    if not s1:
        print("plan-stage2: no finished stage 1 in the log", file=sys.stderr)
        return 1
    r = s1[-1]
    per_iteration1 = max(r["seconds"], 1) / r["iterations"]
    # a stage-2 process starts like stage 1's did (imports, data, workers): its wall minus its loop
    startup = max(args.stage1_wall - r["seconds"], 0) * args.processes
    per_iteration2 = args.ratio * args.muscles / N_STRUCTURES * per_iteration1  # one iteration of each muscle
    usable = args.safety * (args.remaining - startup - args.muscles * args.overhead)
    n = math.floor(usable / per_iteration2) if usable > 0 else 0
    planned = min(max(n, args.min), args.max)
    print(f"plan-stage2: stage 1 {per_iteration1:.4f} s/it -> stage 2 ~{per_iteration2:.3f} s per iteration of all "
          f"{args.muscles} muscle(s); {args.remaining:.0f} s left - {startup:.0f} s start-up - {args.muscles} x "
          f"{args.overhead:.0f} s per muscle, x {args.safety}: {n} iterations fit -> {planned} "
          f"(clamped to [{args.min}, {args.max}])", file=sys.stderr)
    print(planned)
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
    p = sub.add_parser("device-bundle")
    p.add_argument("device_data")
    p.add_argument("source_data")
    p.set_defaults(func=device_bundle)
    p = sub.add_parser("rates")
    p.add_argument("log")
    p.add_argument("--tsv")
    p.set_defaults(func=rates)
    p = sub.add_parser("plan-stage2")
    p.add_argument("log")
    p.add_argument("--remaining", type=float, required=True, help="seconds of the budget left")
    p.add_argument("--stage1-wall", type=float, required=True, help="wall seconds of the stage-1 process")
    p.add_argument("--muscles", type=int, default=N_STRUCTURES)
    p.add_argument("--processes", type=int, default=1, help="stage-2 processes to start (one per listed muscle)")
    p.add_argument("--ratio", type=float, default=STAGE2_COST_RATIO)
    p.add_argument("--overhead", type=float, default=3.0, help="seconds per muscle outside the loop (workers, save)")
    p.add_argument("--safety", type=float, default=0.85)
    p.add_argument("--min", type=int, default=100)
    p.add_argument("--max", type=int, default=1000)
    p.set_defaults(func=plan_stage2)
    p = sub.add_parser("finish")
    p.add_argument("models_dir")
    p.add_argument("--bundle-config", required=True)
    p.add_argument("--muscles", default="", help="the muscles stage 2 was asked for (space-separated; empty: all)")
    p.set_defaults(func=finish)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
