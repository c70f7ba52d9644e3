"""Per-muscle volume ranges for the segment job's plausibility warnings, measured on the atlas.

Reads the four Visible Human legs (``shared/data/visible_human_lower_limb``, 1 mm label maps,
CC BY 4.0), measures every muscle's volume per leg (mL), sums the parts of composite ontology
structures (``fibulari`` = fibularis longus + brevis, ``iliopsoas`` = iliacus + psoas major, ...)
and writes ``muscle_pipeline/data/muscle_volume_ranges.json``:

    {"structures": {"soleus": {"atlas_ml": [4 legs], "low_ml": ..., "high_ml": ...}, ...}}

The range is deliberately wide: ``low = LOW_FACTOR × smallest atlas leg`` (severe atrophy, e.g.
in muscular dystrophies, leaves a fraction of a muscle; and the low bound is only applied to a
muscle wholly inside the field of view) and ``high = HIGH_FACTOR × largest atlas leg`` (1.8). In 24
healthy young adults (Handsfield et al., J Biomech 47:631, 2014) single lower-limb muscle
volumes spread about 2–3× between the smallest and largest subject, and the Visible Human man
(large, muscular) sits near the top of that spread, so 1.8× his volume is beyond what a healthy
leg holds. A volume outside the range is a warning, not an error.

    .venv/bin/python benchmarks/anatomical_volume_ranges.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from muscle_pipeline import labels as ontology

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "muscle_pipeline" / "data" / "muscle_volume_ranges.json"
LEGS = ("VHF_Left", "VHF_Right", "VHM_Left", "VHM_Right")
LOW_FACTOR = 0.1
HIGH_FACTOR = 1.8


def atlas_volumes(atlas_dir: Path) -> dict[str, list[float]]:
    """Structure name (side-less) -> volume in mL in each of the four legs (0 where absent)."""
    mapping = json.loads((REPO / "muscle_pipeline" / "datasets" / "visible_human_lower_limb.json").read_text())["labels"]
    volumes: dict[str, list[float]] = {}
    for k, leg in enumerate(LEGS):
        image = nib.load(str(atlas_dir / f"{leg}_labels_1mm.nii.gz"))
        voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        counts = np.bincount(np.asarray(image.dataobj, dtype=np.uint8).ravel(), minlength=256)
        for value, name in mapping.items():
            base = name.removesuffix("_right").removesuffix("_left")
            if ontology.structure(base).region not in ("hip", "thigh", "leg") or base in ("femur", "tibia", "fibula",
                                                                                          "hip_bone", "patella"):
                continue
            volumes.setdefault(base, [0.0] * len(LEGS))[k] += counts[int(value)] * voxel_ml
    for composite in ("fibulari", "phalangeal_extensors", "iliopsoas", "gastrocnemius", "external_rotators",
                      "quadriceps_femoris"):
        parts = [p for p in ontology.parts_of(composite) if p in volumes]
        if parts:
            volumes[composite] = [sum(volumes[p][k] for p in parts) for k in range(len(LEGS))]
    return volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    volumes = atlas_volumes(args.data / "visible_human_lower_limb")
    table = {}
    for name, per_leg in sorted(volumes.items(), key=lambda kv: ontology.structure(kv[0]).base):
        present = [v for v in per_leg if v > 0]
        if not present:
            continue
        table[name] = {"atlas_ml": [round(v, 1) for v in per_leg], "low_ml": round(LOW_FACTOR * min(present), 1),
                       "high_ml": round(HIGH_FACTOR * max(present), 1)}
        print(f"{name:32s} atlas {' '.join(f'{v:7.1f}' for v in per_leg)} mL -> range "
              f"{table[name]['low_ml']:.1f}-{table[name]['high_ml']:.1f} mL")
    OUT.write_text(json.dumps({
        "description": "Plausible volume (mL) of one muscle of one leg; outside it the segment job warns. "
                       "Written by benchmarks/anatomical_volume_ranges.py from the Visible Human atlas "
                       "(4 legs; 0 = absent from that leg's meshes).",
        "legs": list(LEGS), "low_factor": LOW_FACTOR, "high_factor": HIGH_FACTOR,
        "reference": "Handsfield GG, Meyer CH, Hart JM, Abel MF, Blemker SS. Relationships of 35 lower limb "
                     "muscles to height and body mass quantified using MRI. J Biomech 47(3):631-638, 2014.",
        "structures": table}, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
