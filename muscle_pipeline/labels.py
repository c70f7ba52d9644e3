"""The muscle ontology: one table of every structure muscle_pipeline can name.

Values are stable: once published a value never changes meaning. The scheme is
``value = base`` for the subject's RIGHT side (and for unsided structures) and
``value = base + LEFT_OFFSET`` (100) for the LEFT side, so a left/right swap after mirroring
is ``±100`` and every value fits in uint8.

Bases: 1–35 the 35 lower-limb muscles of Ni et al. (2019); 36–49 finer muscles that refine a
grouped Ni entry (``parent``); 50–59 bones; 60–69 trunk muscles; 70–79 tissues.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import lru_cache

LEFT_OFFSET = 100
SIDES = ("right", "left")


@dataclass(frozen=True)
class Structure:
    """One anatomical structure, side-independent."""

    base: int
    name: str  # snake_case, e.g. "gluteus_maximus"
    display: str  # e.g. "Gluteus maximus"
    kind: str  # "muscle" | "bone" | "tissue"
    region: str  # "hip" | "thigh" | "leg" | "trunk" | "body"
    group: str | None  # stage-1 group of the cascade (muscles only)
    sided: bool = True
    parent: str | None = None  # grouped Ni entry this finer structure belongs to
    ni_dice: float | None = None  # Ni et al. 2019 reported mean Dice (literature.md)
    aliases: tuple[str, ...] = ()  # side-independent names used by other tools


@dataclass(frozen=True)
class Label:
    """One value of a label map: a structure on one side."""

    value: int
    name: str  # e.g. "gluteus_maximus_left"; unsided structures keep the bare name
    structure: Structure
    side: str | None  # "left" | "right" | None
    color: tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def region(self) -> str:
        return self.structure.region

    @property
    def group(self) -> str | None:
        return self.structure.group

    @property
    def kind(self) -> str:
        return self.structure.kind


def _m(base, name, display, region, group, ni_dice=None, parent=None, aliases=()):
    return Structure(base, name, display, "muscle", region, group, True, parent, ni_dice, tuple(aliases))


# Stage-1 groups: about ten groups of adjacent muscles along the superior–inferior axis, as in
# Ni et al.; stage 1 segments groups at low resolution and each muscle's box comes from its group.
STAGE1_GROUPS = (
    "iliopsoas",
    "gluteal",
    "deep_hip_rotators",
    "quadriceps",
    "adductors",
    "medial_thigh",
    "hamstrings",
    "posterior_leg_superficial",
    "posterior_leg_deep",
    "anterolateral_leg",
)

STRUCTURES: tuple[Structure, ...] = (
    # --- hip (Ni et al.) ---
    _m(1, "gluteus_maximus", "Gluteus maximus", "hip", "gluteal", 0.97),
    _m(2, "gluteus_medius", "Gluteus medius", "hip", "gluteal", 0.93),
    _m(3, "gluteus_minimus", "Gluteus minimus", "hip", "gluteal", 0.88),
    _m(4, "tensor_fasciae_latae", "Tensor fasciae latae", "hip", "gluteal", 0.94, aliases=("tensor_fascia_latae",)),
    _m(5, "iliacus", "Iliacus", "hip", "iliopsoas", 0.91),
    _m(6, "psoas_major", "Psoas major", "hip", "iliopsoas", 0.78),
    _m(7, "piriformis", "Piriformis", "hip", "deep_hip_rotators", 0.80),
    _m(8, "obturator_internus", "Obturator internus", "hip", "deep_hip_rotators", 0.78),
    _m(9, "obturator_externus", "Obturator externus", "hip", "deep_hip_rotators", 0.78),
    _m(10, "quadratus_femoris", "Quadratus femoris", "hip", "deep_hip_rotators", 0.81),
    _m(11, "external_rotators", "External rotators (gemelli)", "hip", "deep_hip_rotators", 0.70),
    # --- thigh (Ni et al.) ---
    _m(12, "rectus_femoris", "Rectus femoris", "thigh", "quadriceps", 0.96),
    _m(13, "vastus_lateralis", "Vastus lateralis", "thigh", "quadriceps", 0.94),
    _m(14, "vastus_intermedius", "Vastus intermedius", "thigh", "quadriceps", 0.88),
    _m(15, "vastus_medialis", "Vastus medialis", "thigh", "quadriceps", 0.95),
    _m(16, "sartorius", "Sartorius", "thigh", "medial_thigh", 0.93, aliases=("satorius",)),
    _m(17, "gracilis", "Gracilis", "thigh", "medial_thigh", 0.94),
    _m(18, "adductor_longus", "Adductor longus", "thigh", "adductors", 0.94),
    _m(19, "adductor_brevis", "Adductor brevis", "thigh", "adductors", 0.83),
    _m(20, "adductor_magnus", "Adductor magnus", "thigh", "adductors", 0.94),
    _m(21, "pectineus", "Pectineus", "thigh", "adductors", 0.84),
    _m(22, "biceps_femoris_long_head", "Biceps femoris: long head", "thigh", "hamstrings", 0.94),
    _m(23, "biceps_femoris_short_head", "Biceps femoris: short head", "thigh", "hamstrings", 0.93),
    _m(24, "semitendinosus", "Semitendinosus", "thigh", "hamstrings", 0.93),
    _m(25, "semimembranosus", "Semimembranosus", "thigh", "hamstrings", 0.93),
    # --- leg (Ni et al.) ---
    _m(26, "gastrocnemius_medial_head", "Gastrocnemius: medial head", "leg", "posterior_leg_superficial", 0.95,
       aliases=("medial_gastrocnemius",)),
    _m(27, "gastrocnemius_lateral_head", "Gastrocnemius: lateral head", "leg", "posterior_leg_superficial", 0.92,
       aliases=("lateral_gastrocnemius",)),
    _m(28, "soleus", "Soleus", "leg", "posterior_leg_superficial", 0.94),
    _m(29, "popliteus", "Popliteus", "leg", "posterior_leg_deep", 0.88),
    _m(30, "tibialis_anterior", "Tibialis anterior", "leg", "anterolateral_leg", 0.92),
    _m(31, "tibialis_posterior", "Tibialis posterior", "leg", "posterior_leg_deep", 0.90),
    _m(32, "flexor_digitorum_longus", "Flexor digitorum longus", "leg", "posterior_leg_deep", 0.85),
    _m(33, "flexor_hallucis_longus", "Flexor hallucis longus", "leg", "posterior_leg_deep", 0.87),
    _m(34, "fibulari", "Fibulari (peronei)", "leg", "anterolateral_leg", 0.93, aliases=("peroneus", "peronei")),
    _m(35, "phalangeal_extensors", "Phalangeal extensors", "leg", "anterolateral_leg", 0.90),
    # --- finer muscles refining a grouped Ni entry ---
    _m(36, "fibularis_longus", "Fibularis longus", "leg", "anterolateral_leg", parent="fibulari",
       aliases=("peroneus_longus",)),
    _m(37, "fibularis_brevis", "Fibularis brevis", "leg", "anterolateral_leg", parent="fibulari",
       aliases=("peroneus_brevis",)),
    _m(38, "fibularis_tertius", "Fibularis tertius", "leg", "anterolateral_leg", parent="fibulari"),
    _m(39, "extensor_digitorum_longus", "Extensor digitorum longus", "leg", "anterolateral_leg",
       parent="phalangeal_extensors"),
    _m(40, "extensor_hallucis_longus", "Extensor hallucis longus", "leg", "anterolateral_leg",
       parent="phalangeal_extensors"),
    _m(41, "gemellus_superior", "Gemellus superior", "hip", "deep_hip_rotators", parent="external_rotators"),
    _m(42, "gemellus_inferior", "Gemellus inferior", "hip", "deep_hip_rotators", parent="external_rotators"),
    _m(43, "plantaris", "Plantaris", "leg", "posterior_leg_superficial"),
    _m(44, "adductor_minimus", "Adductor minimus", "thigh", "adductors", parent="adductor_magnus"),
    _m(45, "psoas_minor", "Psoas minor", "hip", "iliopsoas"),
    # --- bones ---
    Structure(50, "femur", "Femur", "bone", "thigh", None),
    Structure(51, "tibia", "Tibia", "bone", "leg", None),
    Structure(52, "fibula", "Fibula", "bone", "leg", None),
    Structure(53, "hip_bone", "Hip bone", "bone", "hip", None, aliases=("hip",)),
    Structure(54, "patella", "Patella", "bone", "thigh", None),
    Structure(55, "sacrum", "Sacrum", "bone", "trunk", None, sided=False),
    # --- trunk muscles present in our data ---
    Structure(60, "iliopsoas", "Iliopsoas (iliacus + psoas)", "muscle", "trunk", "iliopsoas"),
    Structure(61, "quadratus_lumborum", "Quadratus lumborum", "muscle", "trunk", None),
    Structure(62, "multifidus", "Multifidus", "muscle", "trunk", None),
    Structure(63, "erector_spinae", "Erector spinae", "muscle", "trunk", None),
    Structure(64, "autochthon", "Autochthonous back muscles", "muscle", "trunk", None),
    # --- tissues (unsided) ---
    Structure(70, "subcutaneous_fat", "Subcutaneous fat", "tissue", "body", None, sided=False),
    Structure(71, "skin", "Skin", "tissue", "body", None, sided=False),
    Structure(72, "intermuscular_fat", "Intermuscular fat", "tissue", "body", None, sided=False),
)

NI_MUSCLES: tuple[str, ...] = tuple(s.name for s in STRUCTURES if 1 <= s.base <= 35)


def _color(base: int, side: str | None) -> tuple[int, int, int]:
    # Golden-angle hues spread neighbouring bases apart; the left side is a darker shade of
    # the right so a viewer shows pairs as related but distinct.
    hue = (base * 0.618033988749895) % 1.0
    value = 0.95 if side != "left" else 0.70
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=None)
def all_labels() -> tuple[Label, ...]:
    """Every label value in the ontology, sorted by value."""
    out = []
    for s in STRUCTURES:
        if s.sided:
            out.append(Label(s.base, f"{s.name}_right", s, "right", _color(s.base, "right")))
            out.append(Label(s.base + LEFT_OFFSET, f"{s.name}_left", s, "left", _color(s.base, "left")))
        else:
            out.append(Label(s.base, s.name, s, None, _color(s.base, None)))
    return tuple(sorted(out, key=lambda l: l.value))


@lru_cache(maxsize=None)
def _by_name() -> dict[str, Label]:
    return {l.name: l for l in all_labels()}


@lru_cache(maxsize=None)
def _by_value() -> dict[int, Label]:
    return {l.value: l for l in all_labels()}


def label(name_or_value: str | int) -> Label:
    """Look up a label by ontology name (``"soleus_left"``) or value (``128``)."""
    table = _by_value() if isinstance(name_or_value, int) else _by_name()
    try:
        return table[name_or_value]
    except KeyError:
        raise KeyError(f"{name_or_value!r} is not in the muscle ontology") from None


def value_of(name: str) -> int:
    return label(name).value


def name_of(value: int) -> str:
    return label(int(value)).name


def structure(name: str) -> Structure:
    for s in STRUCTURES:
        if s.name == name:
            return s
    raise KeyError(f"{name!r} is not a structure of the muscle ontology")


def mirror_value(value: int) -> int:
    """The same structure on the other side (unsided values and background map to themselves)."""
    if value == 0:
        return 0
    l = label(int(value))
    if l.side == "right":
        return value + LEFT_OFFSET
    if l.side == "left":
        return value - LEFT_OFFSET
    return value


def swap_sides_lut(max_value: int = 255):
    """A lookup table ``lut[v] = mirror_value(v)`` for label arrays (numpy uint8/int)."""
    import numpy as np

    lut = np.arange(max_value + 1, dtype=np.int64)
    for l in all_labels():
        if l.value <= max_value:
            lut[l.value] = mirror_value(l.value)
    return lut
