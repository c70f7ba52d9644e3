"""The data the shipped ``thigh_ct_25d`` weights were trained on, as a training data-list entry.

``bundles/thigh_ct_25d/configs/train.json`` trains on it unless ``--dataset_dir`` (or
``--dataset``) names a lab's own scans: TotalSegmentator's example CT (``totalsegmentator/
ct_abdomen_pelvis`` under the shared data folder, labels = TotalSegmentator predictions, hip to
lung bases, proximal femur only), its values mapped to the ontology by the
``totalsegmentator_total`` dataset map. Kept in the package because ``muscle-pipeline train
thigh_ct_25d`` imports it; the held-out comparison built on the same scan is development tooling
(``tools.thigh25d_compare``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["REAL_CT", "real_ct_entry"]

SHARED = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", "/work/shared/data"))
REAL_CT = SHARED / "totalsegmentator" / "ct_abdomen_pelvis"


def real_ct_entry(sides: Sequence[str] | str | None = None, data_root: str | Path | None = None) -> dict:
    """Dataset entry of the real CT (TotalSegmentator values mapped to the ontology)."""
    root = Path(data_root) / "totalsegmentator" / "ct_abdomen_pelvis" if data_root else REAL_CT
    return {"image": str(root / "example_ct.nii.gz"), "label": str(root / "example_seg_fast_force_split.nii.gz"),
            "label_map": "totalsegmentator_total", "sides": sides}
