"""Procedural anatomy of the phantoms: thigh, calf (lower leg) and hip, one side at a time.

Each side is described in its own frame (mm): ``u`` = distance towards the subject's lateral
side (``u = x`` for the right side, ``u = -x`` for the left, x in body RAS), ``v`` = anterior,
``z`` = superior in region coordinates (thigh/calf: 0 = distal end of the region). The left
side is therefore the mirror image of the right side, with its own random variation.

An axial cross-section is built in layers:
  air | skin | subcutaneous fat | deep compartment (inside the fascia)
and inside the deep compartment, bones (cortex + marrow, hard shapes) first, then muscles that
*compete* for the remaining space: each voxel goes to the muscle with the largest signed
distance (a Voronoi-like packing of keyframed ellipses, so muscles are tightly packed and never
overlap), thin intermuscular fat septa where two muscles meet, and intermuscular fat where no
muscle reaches. Unlabelled competitors (pelvic viscera, abdominal wall) take label 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from muscle_pipeline import labels as ontology
from .shapes import F32, Capsule, CupShell, Ellipsoid, Plate, Solid, Tube, TriTube, ZBins, keyframed

# ------------------------------------------------------------------------------------ entries
@dataclass
class Entry:
    """One kind of voxel: what label it gets and what tissue (intensity class) it is."""

    name: str  # ontology name (e.g. "soleus_left") or a descriptive one for label 0
    label: int
    tissue: str  # air | skin | fat | intermuscular_fat | viscera | muscle | cortex | marrow
    side: str | None = None
    structure: str | None = None  # side-less ontology structure name (muscles and bones)


class Registry:
    """Entries of one phantom; an entry's index is the value of the internal class map."""

    def __init__(self):
        self.entries: list[Entry] = []
        self._index: dict[str, int] = {}
        for tissue, name in (("air", "air"), ("skin", "skin"), ("fat", "subcutaneous_fat"),
                             ("intermuscular_fat", "intermuscular_fat"), ("viscera", "pelvic_viscera"),
                             ("muscle", "unlabelled_muscle")):
            label = ontology.value_of(name) if name in ("skin", "subcutaneous_fat", "intermuscular_fat") else 0
            self.add(Entry(name, label, tissue))

    def add(self, entry: Entry) -> int:
        key = f"{entry.name}:{entry.tissue}"
        if key not in self._index:
            if len(self.entries) >= 255:
                raise RuntimeError("too many phantom entries for a uint8 class map")
            self._index[key] = len(self.entries)
            self.entries.append(entry)
        return self._index[key]

    def lut(self, attr: str, dtype) -> np.ndarray:
        return np.array([getattr(e, attr) for e in self.entries], dtype=dtype)


AIR, SKIN, FAT, IMFAT, VISCERA, UNLABELLED_MUSCLE = range(6)


# --------------------------------------------------------------------------------- spec types
@dataclass
class MuscleSpec:
    """A muscle (or unlabelled soft competitor if ``name`` starts with '_') as a keyframed ellipse."""

    name: str
    z: list
    u: list
    v: list
    a: list
    b: list
    phi: object = 0.0
    z_range: tuple = (-np.inf, np.inf)
    ramp: float | None = None
    expand: float = 12.0


@dataclass
class OutlineSpec:
    """Skin surface (ellipse, keyframed) with subcutaneous fat thickness ``fat`` (mm, keyframed)
    modulated around the limb by ``1 + c1 cos t + s1 sin t + c2 cos 2t`` (t from +u to +v)."""

    z: list
    u: list
    v: list
    a: list
    b: list
    fat: list
    mod: tuple = (0.0, 0.0, 0.0)
    z_range: tuple = (-np.inf, np.inf)
    ramp: float = 30.0


@dataclass
class BoneSpec:
    """A bone: shape parts (factories of shapes.Tube/Solid), each with a cortex thickness (mm),
    and spheres carved out of it (joint spaces)."""

    name: str
    parts: list  # [(callable(zb, scale) -> primitive, cortex mm: float | (z knots, values))]
    carve: list = field(default_factory=list)  # [(center, radius)]
    sided: bool = True


@dataclass
class RegionSpec:
    name: str
    z_lo: float  # region z (mm) of the FOV's inferior end at default extent
    z_hi: float
    fov_xy: tuple  # default field of view (mm) along body x, y
    outlines: list
    bones: list
    muscles: list
    leg_center: tuple | None = None  # (u at mid z, v) of each leg centre for thigh/calf
    tilt_deg: tuple = (0.0, 0.0)  # mean coronal/sagittal tilt of the leg axis (u, v per z)
    main_bone: str = "femur"


# ----------------------------------------------------------------------------- region specs
def _t(knots, length):
    return [k * length for k in np.atleast_1d(knots)]


def thigh_spec(length: float = 360.0) -> RegionSpec:
    """Right thigh from just above the knee (t=0) to just below the lesser trochanter (t=1).
    Frame: origin at the leg centre; u lateral, v anterior (mm)."""
    L = length
    T = lambda *k: _t(k, L)  # noqa: E731
    outlines = [OutlineSpec(z=T(0, 0.2, 0.5, 0.8, 1.0), u=[0, 0, 2, 3, 4], v=[-5, -5, -5, -6, -6],
                            a=[56, 62, 71, 78, 82], b=[54, 60, 67, 72, 76], fat=[6, 8, 10, 11, 12],
                            mod=(-0.2, -0.1, 0.15))]
    femur = BoneSpec("femur", [(lambda zb, s: TriTube(zb, T(0, 0.08, 0.2, 0.5, 0.85, 1.0), [0, 0, 2, 4, 6, 8],
                                                     [-2, 0, 3, 5, 5, 5], [32, 25, 16, 14, 15, 17],
                                                     k=0.03, theta0=-90.0, scale=s),
                                (T(0, 0.08, 0.2, 0.5, 0.85, 1.0), [2.0, 3.0, 5.0, 6.0, 5.5, 5.0]))])
    M = MuscleSpec
    muscles = [
        M("rectus_femoris", T(0.12, 0.3, 0.5, 0.75, 1.0), [0, 0, 1, 4, 8], [36, 40, 40, 44, 48],
          [8, 13, 17, 17, 15], [5, 9, 12, 12, 12], z_range=T(0.1, 1.3)),
        M("vastus_intermedius", T(0.05, 0.15, 0.5, 0.85, 1.0), [0, 2, 8, 10, 14], [25, 26, 21, 22, 23],
          [14, 20, 24, 22, 18], [6, 8, 10, 9, 8], phi=[0, 0, -20, -20, -15], z_range=T(0.04, 1.1)),
        M("vastus_lateralis", T(0.1, 0.3, 0.5, 0.8, 1.0), [30, 36, 40, 44, 46], [12, 10, 6, 6, 8],
          [10, 13, 14, 16, 18], [15, 24, 30, 34, 36], phi=[10, 15, 10, 8, 5], z_range=T(0.07, 1.25)),
        M("vastus_medialis", T(0.05, 0.15, 0.3, 0.5, 0.75, 1.0), [-30, -28, -28, -25, -18, -12],
          [12, 18, 22, 28, 30, 30], [16, 22, 20, 14, 11, 9], [14, 20, 18, 13, 10, 9], z_range=T(0.02, 1.1)),
        M("sartorius", T(0.05, 0.2, 0.5, 0.8, 1.0), [-42, -46, -44, -34, -22], [-22, -10, 18, 40, 55],
          [8, 11, 12, 13, 14], [7, 8, 8, 8, 8], phi=[-80, -70, -50, -30, -20], z_range=T(-0.2, 1.4), expand=6),
        M("gracilis", T(0.05, 0.2, 0.5, 0.8, 1.0), [-42, -48, -54, -60, -66], [-30, -24, -12, -8, -5],
          [5, 6, 7, 8, 8], [6, 9, 11, 13, 13], phi=[20, 10, 0, 0, 0], z_range=T(-0.2, 1.2), expand=6),
        M("adductor_longus", T(0.5, 0.75, 1.0), [-32, -38, -45], [6, 14, 22], [10, 14, 16], [8, 11, 12],
          phi=[-30, -30, -30], z_range=T(0.45, 1.4)),
        M("adductor_brevis", T(0.65, 0.85, 1.0), [-24, -28, -32], [0, 2, 2], [10, 14, 16], [9, 11, 12],
          z_range=T(0.6, 1.3)),
        M("adductor_magnus", T(0.15, 0.35, 0.6, 0.85, 1.0), [-28, -26, -22, -26, -30], [-8, -16, -20, -24, -26],
          [8, 16, 24, 24, 24], [8, 14, 18, 18, 18], phi=[30, 30, 30, 20, 20], z_range=T(0.12, 1.3)),
        M("pectineus", T(0.88, 1.0), [-28, -30], [28, 30], [8, 12], [7, 10], z_range=T(0.85, 1.3)),
        M("semimembranosus", T(0.05, 0.2, 0.45, 0.7, 0.9), [-24, -22, -20, -24, -30], [-28, -32, -40, -46, -50],
          [10, 14, 14, 11, 8], [9, 13, 12, 10, 7], z_range=T(0.02, 1.05)),
        M("semitendinosus", T(0.05, 0.25, 0.5, 0.75, 0.95), [-26, -16, -6, -4, -2], [-42, -48, -50, -52, -56],
          [5, 8, 12, 12, 10], [5, 7, 9, 10, 8], z_range=T(0.03, 1.05)),
        M("biceps_femoris_long_head", T(0.05, 0.25, 0.5, 0.75, 0.95), [26, 24, 18, 14, 12],
          [-24, -36, -44, -50, -52], [9, 12, 13, 13, 11], [8, 11, 12, 11, 9], z_range=T(0.02, 1.05)),
        M("biceps_femoris_short_head", T(0.05, 0.2, 0.4, 0.55), [22, 22, 22, 22], [-14, -18, -20, -20],
          [9, 11, 10, 7], [8, 10, 9, 6], z_range=T(0.02, 0.58)),
        M("tensor_fasciae_latae", T(0.85, 1.0), [44, 44], [40, 44], [8, 10], [10, 13], z_range=T(0.8, 1.4)),
        M("gluteus_maximus", T(0.9, 1.0), [38, 40], [-46, -44], [12, 18], [7, 10], phi=-40, z_range=T(0.86, 1.4)),
    ]
    return RegionSpec("thigh", 0.0, L, (420.0, 220.0), outlines, [femur], muscles,
                      leg_center=(96.0, 0.0), tilt_deg=(7.0, -1.5), main_bone="femur")


def calf_spec(length: float = 320.0) -> RegionSpec:
    """Right lower leg from just above the ankle (t=0) to just below the tibial plateau (t=1)."""
    L = length
    T = lambda *k: _t(k, L)  # noqa: E731
    # subcutaneous fat is thinnest over the anteromedial tibia (t = 120 deg): mod (c1, s1) =
    # 0.5 * (cos, sin)(-60 deg).
    outlines = [OutlineSpec(z=T(0.0, 0.3, 0.6, 0.9, 1.0), u=[2, 2, 3, 3, 3], v=[-2, -6, -10, -8, -6],
                            a=[30, 39, 48, 50, 52], b=[28, 37, 50, 50, 48], fat=[4, 6, 7, 7, 7],
                            mod=(0.25, -0.43, 0.0))]
    tibia = BoneSpec("tibia", [(lambda zb, s: TriTube(zb, T(0.0, 0.3, 0.6, 0.9, 1.0), [-10, -12, -14, -12, -8],
                                                     [10, 14, 18, 14, 6], [17, 13, 14, 21, 34],
                                                     k=[0.05, 0.12, 0.15, 0.1, 0.03], theta0=100.0, scale=s),
                                (T(0.0, 0.3, 0.6, 0.9, 1.0), [3.0, 5.0, 5.0, 3.0, 1.5]))])
    fibula = BoneSpec("fibula", [(lambda zb, s: TriTube(zb, T(0.0, 0.3, 0.6, 0.9, 0.97), [22, 22, 24, 28, 30],
                                                       [0, -4, -6, -12, -16], [8, 6.5, 7, 8, 12], k=0.08,
                                                       theta0=0.0, z_range=(-1e9, 0.995 * L), ramp=4.0, scale=s),
                                  (T(0.0, 0.3, 0.6, 0.9, 0.97), [2.5, 2.5, 2.5, 2.0, 1.5]))])
    M = MuscleSpec
    muscles = [
        M("tibialis_anterior", T(0.1, 0.3, 0.6, 0.9), [0, 2, 2, 6], [18, 20, 26, 28], [6, 8, 10, 10],
          [6, 9, 13, 12], phi=80, z_range=T(0.08, 1.02)),
        M("phalangeal_extensors", T(0.1, 0.3, 0.6, 0.9), [12, 14, 16, 22], [12, 13, 18, 16], [7, 7, 7, 8],
          [8, 9, 11, 8], phi=80, z_range=T(0.04, 0.98)),
        M("fibulari", T(0.15, 0.3, 0.6, 0.9), [27, 30, 36, 38], [-9, -8, 0, -2], [7, 8, 9, 8], [7, 9, 14, 10],
          phi=100, z_range=T(0.12, 0.98)),
        M("tibialis_posterior", T(0.25, 0.6, 0.9), [-6, 4, 8], [2, 2, -2], [8, 10, 12], [6, 7, 9],
          z_range=T(0.18, 0.92)),
        M("flexor_digitorum_longus", T(0.15, 0.3, 0.6, 0.8), [-16, -16, -16, -18], [-4, -6, -4, -10], [6, 8, 9, 6],
          [5, 6, 7, 5], z_range=T(0.1, 0.85)),
        M("flexor_hallucis_longus", T(0.1, 0.3, 0.6), [8, 10, 18], [-14, -16, -16], [10, 12, 11], [8, 9, 8],
          z_range=T(0.05, 0.72)),
        M("soleus", T(0.2, 0.4, 0.6, 0.85), [0, 0, 0, 4], [-22, -23, -22, -22], [22, 30, 34, 28],
          [7, 9, 10, 7], z_range=T(0.16, 0.9)),
        M("gastrocnemius_medial_head", T(0.35, 0.6, 0.85, 1.0), [-8, -18, -20, -20], [-34, -40, -40, -40],
          [8, 22, 26, 20], [6, 14, 16, 12], phi=20, z_range=T(0.32, 1.2)),
        M("gastrocnemius_lateral_head", T(0.45, 0.65, 0.85, 1.0), [12, 16, 20, 22], [-34, -38, -38, -38],
          [8, 17, 20, 16], [6, 11, 13, 11], phi=-20, z_range=T(0.42, 1.2)),
        M("popliteus", T(0.86, 0.95, 1.0), [-4, -4, 0], [-12, -14, -16], [12, 22, 22], [5, 7, 7], phi=20,
          z_range=T(0.82, 1.05)),
    ]
    return RegionSpec("calf", 0.0, L, (290.0, 160.0), outlines, [tibia, fibula], muscles,
                      leg_center=(72.0, 0.0), tilt_deg=(2.0, 0.0), main_bone="tibia")


# Hip frame: u = mm from the midline towards the side, v anterior, z = mm above the femoral head
# centre. Positions were read off a real pelvic CT (TotalSegmentator example, 3 mm) and rounded.
HEAD = (86.0, 0.0, 0.0)
FEMUR_SHAFT = ((120.0, -12.0, -60.0), (104.0, -8.0, -300.0))


def hip_spec() -> RegionSpec:
    """Pelvis from the iliac crest to the proximal thigh, both sides of one trunk."""
    outlines = [
        OutlineSpec(z=[-85, -60, -20, 27, 57, 87, 117], u=0, v=[-32, -30, -27, -21, -2, 5, 4],
                    a=[125, 160, 170, 176, 174, 170, 164], b=[62, 72, 82, 94, 112, 112, 106],
                    fat=[14, 14, 14, 14, 14, 14, 14], mod=(-0.2, -0.25, 0.1), z_range=(-95, 1e9), ramp=25.0),
        OutlineSpec(z=[-200, -60], u=[96, 104], v=[-8, -12], a=[78, 80], b=[76, 74], fat=[10, 12],
                    mod=(-0.2, -0.1, 0.1), z_range=(-1e9, -15), ramp=30.0),
    ]
    femur = BoneSpec("femur", [
        (lambda zb, s: Capsule(HEAD, HEAD, 24.0), 2.0),
        (lambda zb, s: Capsule(HEAD, (122, -12, -30), 15.0, 17.0), 3.0),
        (lambda zb, s: Ellipsoid((136, -14, -12), (14, 18, 24)), 2.0),
        (lambda zb, s: Capsule((122, -12, -30), FEMUR_SHAFT[0], 19.0, 17.0), 3.0),
        (lambda zb, s: Ellipsoid((108, -22, -58), (10, 10, 12)), 2.0),
        (lambda zb, s: Capsule(FEMUR_SHAFT[0], FEMUR_SHAFT[1], 16.0, 14.0), 5.0),
    ])
    hip_bone = BoneSpec("hip_bone", [
        # iliac wing: a curved plate from the sacroiliac joint (P1) to the anterior spine (P2)
        (lambda zb, s: Plate(zb, [40, 57, 87, 117], [84, 80, 54, 84], [-30, -39, -54, -69], [100, 104, 120, 122],
                             [40, 51, 60, 12], [3, 5, 10, 16], [12, 8, 6, 7], z_range=(34, 121), ramp=5.0), 2.0),
        # body of the ilium above the acetabulum
        (lambda zb, s: Tube(zb, [15, 30, 48], [86, 84, 82], [-8, -12, -16], [17, 16, 10], [26, 24, 18],
                            phi=70, z_range=(12, 52), ramp=6.0, expand=0), 2.0),
        (lambda zb, s: CupShell(HEAD, 25.5, 33.0, (0.66, 0.24, -0.71), 0.05), 2.0),
        (lambda zb, s: Capsule((76, -28, -12), (64, -42, -55), 12.0, 10.0), 2.0),  # ischium
        (lambda zb, s: Ellipsoid((66, -44, -58), (14, 13, 16)), 2.0),  # ischial tuberosity
        (lambda zb, s: Capsule((80, 24, -6), (14, 42, -22), 10.0, 9.0), 2.0),  # superior pubic ramus
        (lambda zb, s: Capsule((13, 44, -14), (13, 42, -38), 9.5), 2.0),  # pubic body (symphysis gap)
        (lambda zb, s: Capsule((14, 40, -34), (62, -34, -62), 7.0), 2.0),  # inferior ramus
    ], carve=[(HEAD, 25.5)])
    sacrum = BoneSpec("sacrum", [
        (lambda zb, s: Tube(zb, [-35, 0, 27, 57, 87, 117], 0.0, [-92, -90, -88, -82, -60, -36], [8, 14, 20, 26, 48, 28],
                            [6, 8, 8, 11, 22, 26], z_range=(-45, 122), ramp=10.0, expand=0), 2.0),
    ], sided=False)
    M = MuscleSpec
    muscles = [
        M("gluteus_maximus", [-130, -60, -20, 0, 27, 57, 87, 117], [140, 125, 108, 100, 98, 95, 90, 100],
          [-45, -58, -70, -74, -76, -78, -75, -75], [18, 40, 58, 64, 66, 55, 40, 22], [10, 16, 20, 22, 22, 18, 14, 9],
          phi=[50, 45, 35, 30, 28, 25, 28, 30], z_range=(-140, 124), ramp=15.0, expand=14),
        M("gluteus_medius", [-15, 0, 27, 57, 87, 117], [152, 156, 150, 146, 150, 150], [-4, -10, -15, -20, -25, -18],
          [14, 18, 34, 45, 40, 26], [8, 12, 16, 16, 16, 12], phi=[85, 85, 80, 75, 65, 75], z_range=(-22, 126),
          ramp=12.0, expand=14),
        M("gluteus_minimus", [-5, 27, 57, 87], [140, 135, 124, 128], [14, 15, 5, 18], [10, 18, 25, 24],
          [8, 8, 7, 6], phi=[80, 80, 72, 60], z_range=(-12, 100), ramp=10.0),
        M("tensor_fasciae_latae", [-90, -50, 0, 27, 45], [150, 152, 156, 150, 140], [28, 32, 36, 48, 52],
          [7, 9, 10, 9, 7], [10, 13, 14, 12, 9], phi=60, z_range=(-110, 52), ramp=10.0),
        M("iliacus", [-40, -10, 27, 57, 87, 117], [108, 92, 94, 80, 84, 92], [30, 38, 38, 18, 16, -20],
          [10, 12, 13, 30, 38, 30], [10, 12, 12, 12, 11, 9], phi=[0, 0, 0, 75, 60, 65],
          z_range=(-55, 122), ramp=12.0),
        M("psoas_major", [-55, -25, 0, 27, 57, 87, 117], [100, 88, 70, 65, 55, 60, 52], [10, 30, 36, 35, 30, 12, -12],
          [8, 12, 13, 13, 14, 15, 16], [8, 11, 12, 13, 14, 15, 16], z_range=(-65, 300), ramp=12.0),
        M("piriformis", [10, 25, 45], [112, 90, 56], [-34, -48, -66], [14, 24, 26], [7, 9, 9],
          phi=[25, 30, 20], z_range=(5, 52), ramp=8.0),
        M("obturator_internus", [-35, -10, 10, 25], [55, 52, 52, 56], [8, 0, -8, -16], [6, 7, 7, 5],
          [16, 22, 20, 12], phi=90, z_range=(-42, 28), ramp=8.0, expand=5),
        M("external_rotators", [-12, 0, 10], [106, 106, 106], [-36, -38, -38], [12, 16, 14], [5, 6, 5], phi=10,
          z_range=(-16, 14), ramp=6.0, expand=5),
        M("obturator_externus", [-42, -30, -18], [74, 84, 90], [8, 4, -2], [14, 20, 16], [6, 7, 6], phi=-20,
          z_range=(-48, -12), ramp=6.0, expand=5),
        M("quadratus_femoris", [-65, -50, -38], [94, 94, 94], [-36, -36, -36], [18, 22, 18], [6, 7, 6], phi=5,
          z_range=(-72, -32), ramp=6.0, expand=5),
        M("sartorius", [-140, -70, -30, 0, 27, 50], [86, 100, 112, 120, 124, 126], [54, 58, 58, 57, 57, 56],
          [12, 10, 9, 9, 8, 6], [8, 7, 7, 6, 6, 6], phi=[-20, -10, 0, 0, 0, 0], z_range=(-300, 55), ramp=10.0,
          expand=6),
        M("rectus_femoris", [-140, -70, -30, 0, 22], [110, 116, 116, 114, 110], [44, 40, 38, 36, 36],
          [14, 10, 8, 8, 6], [11, 9, 8, 7, 6], z_range=(-300, 28), ramp=10.0),
        M("vastus_lateralis", [-140, -90, -40], [148, 152, 153], [-2, -6, -10], [16, 14, 10], [30, 26, 18],
          phi=[10, 10, 10], z_range=(-300, -30), ramp=12.0),
        M("vastus_intermedius", [-140, -90], [120, 126], [14, 12], [16, 12], [8, 7], z_range=(-300, -75),
          ramp=10.0),
        M("vastus_medialis", [-140, -110], [92, 98], [24, 22], [9, 7], [9, 7], z_range=(-300, -105), ramp=10.0),
        M("pectineus", [-110, -70, -35], [70, 60, 46], [34, 40, 46], [12, 14, 14], [9, 10, 8], phi=[10, 10, 10],
          z_range=(-120, -24), ramp=10.0),
        M("adductor_longus", [-140, -90, -55], [64, 50, 40], [24, 36, 46], [15, 13, 9], [12, 10, 8],
          phi=-30, z_range=(-300, -45), ramp=10.0),
        M("adductor_brevis", [-140, -90, -65], [76, 66, 60], [0, 14, 20], [14, 12, 9], [11, 9, 7],
          z_range=(-300, -58), ramp=10.0),
        M("adductor_magnus", [-140, -100, -70], [74, 70, 68], [-28, -24, -22], [20, 18, 12], [16, 14, 10],
          phi=20, z_range=(-300, -62), ramp=10.0),
        M("gracilis", [-140, -90, -60], [40, 32, 26], [0, 16, 26], [8, 7, 6], [13, 12, 10],
          z_range=(-300, -52), ramp=10.0, expand=6),
        M("semimembranosus", [-140, -100, -75], [84, 74, 68], [-50, -52, -50], [10, 9, 8], [8, 8, 7],
          z_range=(-300, -68), ramp=10.0),
        M("semitendinosus", [-140, -100, -75], [98, 88, 80], [-60, -60, -58], [10, 9, 7], [8, 8, 6],
          z_range=(-300, -70), ramp=10.0),
        M("biceps_femoris_long_head", [-140, -100, -75], [116, 102, 90], [-54, -58, -58], [12, 10, 8],
          [10, 8, 7], z_range=(-300, -70), ramp=10.0),
        M("multifidus", [50, 87, 117], [16, 24, 26], [-98, -96, -82], [12, 24, 26], [8, 14, 18],
          z_range=(50, 300), ramp=10.0),
        # unlabelled soft tissue: bladder and bowel, rectum, anterior abdominal wall (label 0)
        M("_viscera", [-60, -20, 0, 27, 57, 87, 117], 0, [10, 15, 25, 25, 30, 40, 40], [18, 30, 42, 48, 70, 80, 85],
          [14, 25, 40, 45, 55, 60, 62], z_range=(-75, 300), ramp=15.0, expand=4),
        M("_viscera", [-50, 0, 40], 0, [-52, -60, -66], [14, 18, 18], [14, 18, 18], z_range=(-60, 50), ramp=10.0,
          expand=3),
        M("_abdominal_wall", [27, 57, 87, 117], [36, 40, 44, 48], [62, 92, 100, 94], [40, 56, 60, 60], [6, 7, 7, 7],
          phi=-8, z_range=(20, 300), ramp=15.0, expand=4),
    ]
    return RegionSpec("hip", -150.0, 122.0, (380.0, 270.0), outlines, [femur, hip_bone, sacrum], muscles,
                      leg_center=None, main_bone="femur")


REGIONS = {"thigh": thigh_spec, "calf": calf_spec, "hip": hip_spec}


def modelled_muscles(region: str) -> tuple[str, ...]:
    """Side-less ontology names of the muscles a region's phantom contains."""
    spec = REGIONS[region]()
    return tuple(m.name for m in spec.muscles if not m.name.startswith("_"))


# --------------------------------------------------------------------------- built anatomy
@dataclass
class _Outline:
    tube: Tube
    fat: np.ndarray
    mod: tuple


@dataclass
class _Bone:
    name: str
    cortex_entry: int
    marrow_entry: int
    parts: list  # [(primitive, cortex_mm)]
    carve: list


class SideAnatomy:
    """The anatomy of one side (``sign`` +1 right, -1 left), ready to classify points."""

    def __init__(self, spec: RegionSpec, side: str, registry: Registry, rng: np.random.Generator,
                 subject: dict, labelled: set[str]):
        self.side = side
        self.sign = 1.0 if side == "right" else -1.0
        self.spec = spec
        span = spec.z_hi - spec.z_lo
        self.zb = ZBins(spec.z_lo - span, 0.25, int(np.ceil(3 * span / 0.25)))
        self.scale = float(subject["scale"])
        self.skin_mm = float(subject["skin_mm"])
        zc = self.zb.centers
        # leg centre along z (thigh/calf): the limb axis is tilted (femur adducted towards the knee)
        if spec.leg_center is not None:
            tilt_u, tilt_v = np.tan(np.deg2rad(subject[f"tilt_{side}"]))
            z_mid = (spec.z_lo + spec.z_hi) / 2
            self.center_u = (subject["leg_u"] + tilt_u * (zc - z_mid)).astype(F32)
            self.center_v = (spec.leg_center[1] + tilt_v * (zc - z_mid)).astype(F32)
        else:
            self.center_u = np.zeros(self.zb.n, F32)
            self.center_v = np.zeros(self.zb.n, F32)
        ramp0 = 0.06 * span

        self.outlines = []
        for o in spec.outlines:
            tube = Tube(self.zb, o.z, o.u, o.v, o.a, o.b, 0.0, o.z_range, o.ramp, expand=0)
            fat = keyframed(self.zb, o.z, o.fat) * F32(subject["fat"])
            self.outlines.append(_Outline(tube, fat, o.mod))

        self.bones = []
        for bone in spec.bones:
            name = f"{bone.name}_{side}" if bone.sided else bone.name
            label = ontology.value_of(name)
            cortex = registry.add(Entry(name, label, "cortex", side if bone.sided else None, bone.name))
            marrow = registry.add(Entry(name, label, "marrow", side if bone.sided else None, bone.name))
            parts = []
            for factory, cortex_mm in bone.parts:
                # cortex: a constant (mm) or keyframes (z knots, mm values)
                cmm = keyframed(self.zb, *cortex_mm) if isinstance(cortex_mm, tuple) else float(cortex_mm)
                parts.append((factory(self.zb, 1.0), cmm))
            self.bones.append(_Bone(bone.name, cortex, marrow, parts, bone.carve))

        self.muscles = []  # (entry, tube)
        # what was drawn per labelled muscle (side-less name -> in-plane size factor, shift of
        # the centre (u, v) mm, z range in region mm, None = unbounded); the phantom's info
        # records it per leg so that tests can compare the two sides with what made them differ
        self.variation: dict[str, dict] = {}
        for m in spec.muscles:
            unlabelled = m.name.startswith("_")
            # per-side variation: size, position, and where the muscle starts and ends
            size = float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
            du, dv = rng.normal(0.0, 1.5, size=2)
            z0, z1 = m.z_range
            dz = rng.normal(0.0, 0.015 * span, size=2)
            z_range = (z0 + dz[0] if np.isfinite(z0) else z0, z1 + dz[1] if np.isfinite(z1) else z1)
            tube = Tube(self.zb, m.z, np.asarray(m.u, float) + du, np.asarray(m.v, float) + dv, m.a, m.b, m.phi,
                        z_range, m.ramp if m.ramp is not None else ramp0, m.expand, scale=size)
            if unlabelled:
                tissue = "viscera" if m.name == "_viscera" else "muscle"
                entry = registry.add(Entry(m.name.lstrip("_"), 0, tissue))
            else:
                self.variation[m.name] = {"size": size, "shift_mm": [float(du), float(dv)],
                                          "z_range_mm": [float(z) if np.isfinite(z) else None for z in z_range]}
                name = f"{m.name}_{side}"
                wanted = m.name in labelled or name in labelled
                entry = registry.add(Entry(name, ontology.value_of(name) if wanted else 0, "muscle", side, m.name))
            self.muscles.append((entry, tube))

    # ---------------------------------------------------------------------------------------
    def local(self, u: np.ndarray, v: np.ndarray, zi: np.ndarray):
        """Side-frame points -> nominal-anatomy frame (leg centre removed, subject size undone)."""
        inv = F32(1.0 / self.scale)
        return (u - self.center_u[zi]) * inv, (v - self.center_v[zi]) * inv

    def classify(self, u: np.ndarray, v: np.ndarray, z: np.ndarray, septum_mm: float) -> np.ndarray:
        """Entry index (uint8) of each point; u, v, z: 1-D float32 side-frame/region coordinates."""
        out = np.zeros(u.shape, np.uint8)  # AIR
        if u.size == 0:
            return out
        zi = self.zb.index(z)
        if zi.min() == zi.max():
            # one z bin (an axial slab of an un-rotated grid): scalar parameters, no gathers
            zi = zi[0]
        ul, vl = self.local(u, v, zi)

        # --- skin surface depth and subcutaneous fat thickness
        depth = np.full(u.shape, -np.inf, F32)
        fat = np.zeros(u.shape, F32)
        for o in self.outlines:
            if not _overlaps(o.tube.z_extent, z):
                continue
            d = o.tube.sd(ul, vl, zi)
            du, dv = ul - o.tube.cu[zi], vl - o.tube.cv[zi]
            rho = np.sqrt(du * du + dv * dv) + F32(1e-6)
            c, s = du / rho, dv / rho
            c1, s1, c2 = o.mod
            f = o.fat[zi] * (F32(1) + F32(c1) * c + F32(s1) * s + F32(c2) * (c * c - s * s))
            take = d > depth
            depth = np.where(take, d, depth)
            fat = np.where(take, np.maximum(f, F32(1.0)), fat)
        depth *= F32(self.scale)  # back to mm of the subject
        inside = np.flatnonzero(depth > 0)
        skin_mm = F32(self.skin_mm)
        out[inside] = np.where(depth[inside] <= skin_mm, SKIN, FAT)
        # below the skin: bones may reach into the fat layer (e.g. the subcutaneous tibia)
        under = inside[depth[inside] > skin_mm]
        deep_mask = depth[under] > skin_mm + fat[under] * F32(self.scale)

        uu, vv, zz, zii = ul[under], vl[under], z[under], _pick(zi, under)
        is_bone = np.zeros(under.shape, bool)
        for bone in self.bones:
            best = np.full(under.shape, -np.inf, F32)
            cortex = np.zeros(under.shape, F32)
            for prim, cmm in bone.parts:
                sel = _within(prim, uu, vv, zz, zii)
                if sel is None:
                    continue
                u_, v_ = uu[sel], vv[sel]
                sd = prim.sd(u_, v_, zz[sel]) if isinstance(prim, Solid) else prim.sd(u_, v_, _pick(zii, sel))
                take = sd > best[sel]
                best[sel] = np.where(take, sd, best[sel])
                cortex[sel] = np.where(take, cmm[_pick(zii, sel)] if np.ndim(cmm) else F32(cmm), cortex[sel])
            for center, radius in bone.carve:
                dist = np.sqrt((uu - F32(center[0])) ** 2 + (vv - F32(center[1])) ** 2 + (zz - F32(center[2])) ** 2)
                best = np.minimum(best, dist - F32(radius))
            hit = (best > 0) & ~is_bone
            out[under[hit]] = np.where(best[hit] <= cortex[hit], bone.cortex_entry, bone.marrow_entry)
            is_bone |= hit

        soft = ~is_bone & deep_mask
        idx = under[soft]
        uu, vv, zz, zii = uu[soft], vv[soft], zz[soft], _pick(zii, soft)
        first = np.full(idx.shape, -np.inf, F32)
        second = np.full(idx.shape, -np.inf, F32)
        owner = np.full(idx.shape, IMFAT, np.uint8)
        for entry, tube in self.muscles:
            # only the points inside the muscle's bounding box (z range and cross-section)
            sel = _within(tube, uu, vv, zz, zii)
            if sel is None:
                continue
            sc = tube.claim(uu[sel], vv[sel], _pick(zii, sel))
            f, s2 = first[sel], second[sel]
            better = sc > f
            second[sel] = np.where(better, f, np.maximum(s2, sc))
            first[sel] = np.where(better, sc, f)
            owner[sel] = np.where(better, np.uint8(entry), owner[sel])
        # muscles meet along thin fat septa: within septum_mm of the equal-distance line
        with np.errstate(invalid="ignore"):
            septum = np.isfinite(second) & ((first - second) * F32(self.scale) < F32(septum_mm))
        owner[septum] = IMFAT
        out[idx] = owner
        return out


def _pick(zi, sel):
    """Bin indices of a subset of points (a scalar bin stays a scalar)."""
    return zi if np.ndim(zi) == 0 else zi[sel]


def _within(prim, u, v, z, zi):
    """Indices of the points inside ``prim``'s bounding box, or None if there are none."""
    if u.size == 0 or not _overlaps(prim.z_extent, z):
        return None
    umin, umax, vmin, vmax = prim.box(int(zi.min()), int(zi.max()))
    if not (umin <= umax and vmin <= vmax):
        return None
    sel = np.flatnonzero((u >= umin) & (u <= umax) & (v >= vmin) & (v <= vmax))
    return sel if sel.size else None


def _overlaps(extent, z: np.ndarray) -> bool:
    return z.size > 0 and extent[0] <= float(z.max()) and extent[1] >= float(z.min())



