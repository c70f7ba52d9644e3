"""Stage 1 of lower_limb_35 trained from the atlas alone, by synthesis, measured on real scans.

What it answers: does a network that has only ever seen synthetic images drawn from the four
Visible Human legs find the muscle groups on real MRI and CT? Stage 1 (a 6 mm 3D U-Net over the
10 Ni muscle groups) is the cheap half of the cascade, so it is the first thing trained.

1. trains stage 1 with ``bundles/lower_limb_35/configs/train.json`` + ``train_atlas.json``
   (both subjects, every draw a new MR contrast or CT; ``--iterations``, one CPU thread);
2. group Dice on the real labelled calf (QMRITools DTI calf, 7 muscles -> 3 calf groups), which
   the network never saw: an honest out-of-distribution figure;
3. group maps on real unlabelled scans through the segment job's own leg split and mirroring:
   how many voxels fall into thigh vs calf vs hip groups (thighs should be thigh groups, calves
   calf groups), and a QC picture of each.

Writes ``benchmarks/results/atlas_stage1.{json,md}`` and ``docs/images/atlas_stage1_*.png``;
weights go to ``benchmarks/work/atlas_stage1/`` (not shipped: stage 2 is not trained yet).

    .venv/bin/python benchmarks/atlas_stage1.py --iterations 1500
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from muscle_pipeline.atlas import training_entries
from muscle_pipeline.cascade.boxes import BoxPriors
from muscle_pipeline.cascade.localize import Localizer
from muscle_pipeline.cascade.model import right_value
from muscle_pipeline.cascade.training import CascadeTrainer, load_side_cases, prepare_case
from muscle_pipeline.io import read_image
from muscle_pipeline.metrics import dice
from muscle_pipeline.qc import save_qc_png
from muscle_pipeline.transforms.legs import segment_per_leg

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CONFIGS = REPO / "bundles" / "lower_limb_35" / "configs"
WORK = REPO / "benchmarks" / "work" / "atlas_stage1"
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO / "docs" / "images"

CALF_IMAGE = DATA / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz"
CALF_LABELS = DATA / "qmritools" / "calf_dti_labeled_half" / "labels_x80-160.nii.gz"
UNLABELLED = {
    "thighs MR (test_up)": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_up.nii.gz",
    "calves MR (test_low)": DATA / "qmritools" / "thigh_calf_unlabeled" / "test_low.nii.gz",
    "calves Dixon fat": DATA / "qmritools" / "thigh_calf_unlabeled" / "dixon_fat.nii.gz",
    "thighs Dixon (MuscleMap)": DATA / "swastling_musclemap" / "thigh_dixon_unlabeled" / "0006-Dixon_TE_345_th.nii.gz",
    "pelvis CT (TotalSegmentator)": DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_ct.nii.gz",
}
REGION_OF_GROUP = {"gluteal": "hip", "iliopsoas": "hip", "deep_hip_rotators": "hip", "quadriceps": "thigh",
                   "medial_thigh": "thigh", "adductors": "thigh", "hamstrings": "thigh",
                   "posterior_leg_superficial": "calf", "posterior_leg_deep": "calf", "anterolateral_leg": "calf"}


CT_IMAGE = UNLABELLED["pelvis CT (TotalSegmentator)"]
CT_LABELS = DATA / "totalsegmentator" / "ct_abdomen_pelvis" / "example_seg_fast_force_split.nii.gz"
TS_NAMES = DATA / "totalsegmentator" / "labels_total.json"
TS_BONE_WORDS = ("femur", "hip_", "sacrum", "vertebrae", "rib_", "humerus", "scapula", "clavicula", "sternum",
                 "costal", "skull")


def ct_scores(right_values: np.ndarray, groups: list[str], display: np.ndarray) -> dict:
    """Stage-1 groups on the pelvis CT (right-side display values, either leg) against its
    TotalSegmentator labels: the share of predicted group voxels lying on organs and vessels
    (every TotalSegmentator label that is no muscle and no bone: the abdomen painted with muscle),
    and the gluteal and iliopsoas groups' Dice (sides pooled)."""
    import nibabel as nib

    names = {int(k): v for k, v in json.loads(TS_NAMES.read_text()).items()}
    ts = np.asarray(nib.load(str(CT_LABELS)).dataobj).astype(np.int64)
    muscle_words = ("gluteus", "iliopsoas", "autochthon")
    organs = np.isin(ts, [v for v, n in names.items()
                          if not any(w in n for w in muscle_words + TS_BONE_WORDS)])
    predicted = right_values > 0
    out = {"share_on_organs": float((predicted & organs).sum() / max(1, predicted.sum()))}
    for group, words in (("gluteal", ("gluteus_",)), ("iliopsoas", ("iliopsoas",))):
        truth = np.isin(ts, [v for v, n in names.items() if any(w in n for w in words)])
        gi = groups.index(group) + 1 if group in groups else None
        pred = right_values == display[gi] if gi is not None else np.zeros_like(truth)
        out[f"{group}_dice"] = float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))
    return out


def make_trainer(iterations: int, work: Path = WORK, non_limb_prob: float = 0.0) -> CascadeTrainer:
    """The trainer of train.json + train_atlas.json, weights into ``work``; ``non_limb_prob``: the
    synthesis's blobs of tissue that is no lower limb (``RandNonLimbTissue``)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_atlas.json")])
    parser["data_root"], parser["output_dir"] = str(DATA), str(work)
    parser["trainer"]["stage1_iterations"] = iterations
    parser["synthesis"]["non_limb_prob"] = non_limb_prob
    return parser.get_parsed_content("trainer")


def localizer_of(trainer: CascadeTrainer, work: Path = WORK) -> Localizer:
    network = trainer.parser.get_parsed_content("stage1_network")
    network.load_state_dict(torch.load(work / "stage1.pt", weights_only=True))
    priors = BoxPriors.from_dict(json.loads((work / "cascade.json").read_text())["priors"])
    return Localizer(network, priors, trainer.parser["stage1_roi"])


def group_map(trainer, localizer, image: MetaTensor) -> np.ndarray:
    """Right-looking leg (1, X, Y, Z) -> stage-1 group index per voxel of its own grid (0 = none)."""
    case = prepare_case(image, image, trainer.cascade)
    prob = localizer.group_probabilities(case["image1"])
    groups = MetaTensor(prob.argmax(0, keepdim=True).float(), affine=case["image1"].affine)
    # stage-1 grid -> the leg's own grid and orientation, by resampling onto its affine
    out = SpatialResample(mode="nearest")(groups, dst_affine=image.affine, spatial_size=image.shape[1:])
    return np.asarray(out[0]).round().astype(np.uint8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--skip-training", action="store_true", help="reuse the stage1.pt of the work folder")
    ap.add_argument("--non-limb-prob", type=float, default=0.0,
                    help="probability of RandNonLimbTissue in the synthesis (tissue that is no lower limb around the leg)")
    ap.add_argument("--tag", default="", help="a variant's name: work folder, results and pictures get it as suffix")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    suffix = f"_{args.tag}" if args.tag else ""
    work = WORK.parent / f"atlas_stage1{suffix}"

    trainer = make_trainer(args.iterations, work, args.non_limb_prob)
    trainer.train_seconds = None
    if not args.skip_training:
        t0 = time.time()
        trainer.run(stage=1)
        trainer.train_seconds = time.time() - t0
    localizer = localizer_of(trainer, work)
    groups = list(trainer.groups)
    # group index -> a display value (the group's first muscle) for the QC legend's colours
    display = np.zeros(256, np.uint8)
    for gi, g in enumerate(groups, start=1):
        display[gi] = right_value(trainer.groups[g][0])
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
              "iterations": args.iterations, "train_seconds": trainer.train_seconds,
              "non_limb_prob": args.non_limb_prob,
              "loss_first_50": float(np.mean(trainer.losses.get("stage 1", [np.nan])[:50])) if trainer.losses else None,
              "loss_last_50": float(np.mean(trainer.losses.get("stage 1", [np.nan])[-50:])) if trainer.losses else None}

    # 2. the real labelled calf: group Dice (right leg as labelled)
    (image, labels), = load_side_cases({"image": str(CALF_IMAGE), "label": str(CALF_LABELS),
                                         "label_map": "qmritools_calf", "sides": "right"})
    pred = group_map(trainer, localizer, image)
    truth = trainer._group_lut[np.asarray(labels[0]).astype(np.int64)]
    calf = {g: float(dice(pred, truth, gi)) for gi, g in enumerate(groups, start=1) if (truth == gi).any()}
    report["real_calf_group_dice"] = calf
    report["real_calf_mean_group_dice"] = float(np.mean(list(calf.values())))
    save_qc_png(np.asarray(image[0]), display[pred], np.asarray(image.affine), IMAGES / f"atlas_stage1{suffix}_calf_dti.png",
                title="stage 1 trained on the atlas only: labelled DTI calf")

    # 3. unlabelled real scans through the segment job's leg split
    report["unlabelled"] = {}
    for name, path in UNLABELLED.items():
        image = read_image(path)
        image = MetaTensor(image.as_tensor().float()[None] if image.ndim == 3 else image.as_tensor().float(),
                           affine=image.affine)

        def predict(leg):
            return torch.as_tensor(display[group_map(trainer, localizer, leg)])

        merged = np.asarray(segment_per_leg(image, predict)[0])
        right = merged % 100
        counts = {}
        for gi, g in enumerate(groups, start=1):
            counts[g] = int((right == display[gi]).sum())
        total = max(1, sum(counts.values()))
        by_region = {}
        for g, n in counts.items():
            by_region[REGION_OF_GROUP[g]] = by_region.get(REGION_OF_GROUP[g], 0) + n / total
        report["unlabelled"][name] = {"share_by_region": {k: round(v, 3) for k, v in by_region.items()},
                                      "voxels_by_group": counts}
        stem = path.name.split(".")[0].replace("-", "_")
        save_qc_png(np.asarray(image[0]), merged, np.asarray(image.affine), IMAGES / f"atlas_stage1{suffix}_{stem}.png",
                    title=f"stage 1 trained on the atlas only: {name}")
        if path == CT_IMAGE:  # the CT's TotalSegmentator labels: muscle painted on organs, gluteal/iliopsoas Dice
            report["unlabelled"][name]["ct_vs_totalsegmentator"] = ct_scores(merged % 100, groups, display)
        logging.info("%s: %s", name, report["unlabelled"][name]["share_by_region"])

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"atlas_stage1{suffix}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Stage 1 from the atlas alone ({args.iterations} iterations"
             f"{f', non-limb tissue p={args.non_limb_prob}' if args.non_limb_prob else ''})", "",
             f"machine: {report['machine']}; training {report['train_seconds'] and round(report['train_seconds'])} s; "
             f"loss {report['loss_first_50']} -> {report['loss_last_50']}", "",
             "| real labelled DTI calf (never seen) | group Dice |", "|---|---|"]
    lines += [f"| {g} | {d:.3f} |" for g, d in calf.items()]
    lines += [f"| mean | {report['real_calf_mean_group_dice']:.3f} |", "",
              "| unlabelled real scan | share of group voxels: hip / thigh / calf |", "|---|---|"]
    for name, r in report["unlabelled"].items():
        s = r["share_by_region"]
        lines.append(f"| {name} | {s.get('hip', 0):.2f} / {s.get('thigh', 0):.2f} / {s.get('calf', 0):.2f} |")
    ct = next((r["ct_vs_totalsegmentator"] for r in report["unlabelled"].values() if "ct_vs_totalsegmentator" in r), None)
    if ct is not None:
        lines += ["", "| pelvis CT vs TotalSegmentator (labels not trained on) | |", "|---|---|",
                  f"| share of predicted group voxels on organs and vessels | {ct['share_on_organs']:.3f} |",
                  f"| gluteal group Dice (gluteus max + med + min, both sides) | {ct['gluteal_dice']:.3f} |",
                  f"| iliopsoas group Dice (both sides) | {ct['iliopsoas_dice']:.3f} |"]
    (RESULTS / f"atlas_stage1{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
