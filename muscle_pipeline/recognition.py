"""What a scan is, before anything segments it: modality, body region per slice, legs present.

As QMRITools' ``SegmentData`` does, each case is recognised first, so that the segment job can
pick a model that covers it (:mod:`muscle_pipeline.routing`) or refuse it with a reason instead of
returning plausible-looking garbage:

* **modality** — from the DICOM ``Modality`` tag where there is one, else from the intensities
  (CT air is about −1000 HU; no MR image goes that negative);
* **region per slice** — foot / leg / knee / thigh / hip / none (no lower limb), by the bone and
  cross-section rules of :func:`muscle_pipeline.transforms.region.recognize_region`, voting with
  at most :data:`MAX_SLICES` evenly spaced slices (a 400-slice CT is known from 64; its body and
  legs are found on those slices alone);
* **legs** — two legs (left and right, by the header's world x) or one.

The result goes into ``report.json`` (``recognition``), onto the QC picture, and is printed by
``muscle-pipeline info``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from monai.data import MetaTensor

from muscle_pipeline.regions import NOT_LOWER_LIMB, REGION_WORDS, REGIONS
from muscle_pipeline.transforms.intensity import HOUNSFIELD_AIR_HU, low_percentile
from muscle_pipeline.transforms.region import recognize_region

MAX_SLICES = 64
# a region counts as present when it holds at least this many voting slices and this share of
# the slices that show a lower limb (one stray vote is not a thigh)
MIN_REGION_SLICES = 2
MIN_REGION_SHARE = 0.1



@dataclass
class ScanRecognition:
    """``modality``: "MR" | "CT" | another DICOM modality | None; ``regions``: voting slices per
    region present (inferior → superior, "none" last); ``per_slice``: the region of every slice
    along the array axis nearest world z (None: not looked at or undecided); ``legs``: "right",
    "left" or "one" (empty when no lower limb was found)."""

    modality: str | None
    modality_source: str
    region: str | None
    regions: dict[str, int]
    per_slice: list[str | None]
    legs: list[str] = field(default_factory=list)

    @property
    def lower_limb(self) -> bool:
        return any(r in REGIONS for r in self.regions)

    @property
    def limb_regions(self) -> list[str]:
        return [r for r in self.regions if r in REGIONS]

    def summary(self) -> str:
        """One line, e.g. ``"MR, calves (29 slices), legs: right, left"``."""
        parts = [f"{REGION_WORDS[r]} ({n} slices)" for r, n in self.regions.items()] or ["no body found"]
        legs = f", legs: {', '.join(self.legs)}" if self.lower_limb and self.legs else ""
        return f"{self.modality or 'unknown modality'}, {' + '.join(parts)}{legs}"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["summary"] = self.summary()
        return out


def recognize_modality(image: MetaTensor, dicom_modality: str | None = None) -> tuple[str | None, str]:
    """("MR" | "CT" | other DICOM modality, how it was decided)."""
    tag = (dicom_modality or "").strip().upper()
    if tag:
        return tag, "DICOM Modality tag"
    low = low_percentile(image)
    if low < HOUNSFIELD_AIR_HU:  # the rule of transforms.intensity.has_hounsfield_air
        return "CT", f"intensities (1st percentile {low:.0f}, air in HU)"
    return "MR", f"intensities (1st percentile {low:.0f}, no HU air)"


def recognize_scan(image: MetaTensor, dicom_modality: str | None = None, max_slices: int = MAX_SLICES,
                   full_resolution: bool = False) -> ScanRecognition:
    """Recognise one scan ((X, Y, Z) or (1, X, Y, Z) MetaTensor with a voxel→RAS affine).

    ``dicom_modality``: the case's DICOM Modality tag (None for NIfTI & co.; then the meta key
    ``modality`` written by the reader is used if set). ``full_resolution``: find the body and
    the legs on the whole volume instead of on the voting slices' copy (see
    :func:`~muscle_pipeline.transforms.region.recognize_region`; slower, kept for comparison)."""
    from muscle_pipeline.segmentation import channel_first

    img = channel_first(image)
    modality, source = recognize_modality(img, dicom_modality or image.meta.get("modality"))
    result = recognize_region(img, max_slices=max_slices, full_resolution=full_resolution)
    counts = result.present
    limb_total = sum(n for r, n in counts.items() if r != NOT_LOWER_LIMB)
    regions = {r: n for r, n in counts.items()
               if r == NOT_LOWER_LIMB or (n >= MIN_REGION_SLICES and n >= MIN_REGION_SHARE * limb_total)}
    if result.region is None:  # the region rule found no lower limb (e.g. a stray vote in a trunk)
        regions = {NOT_LOWER_LIMB: sum(counts.values())} if counts else {}
    recognition = ScanRecognition(modality, source, result.region, regions, result.per_slice, result.legs)
    if not recognition.lower_limb:  # two body halves of a trunk are not legs
        recognition.legs = []
    return recognition
