"""The muscle ontology: one table of every structure muscle_pipeline can name.

Values are stable: once published a value never changes meaning. The scheme is
``value = base`` for the subject's RIGHT side (and for unsided structures) and
``value = base + LEFT_OFFSET`` (100) for the LEFT side, so a left/right swap after mirroring
is ``±100`` and every value fits in uint8.

Bases: 1–35 the 35 lower-limb muscles of Ni et al. (2019); 36–49 finer muscles that refine a
grouped Ni entry (``parent``); 50–59 bones; 60–69 trunk muscles (and TotalSegmentator's
iliopsoas); 70–79 tissues; 80–89 coarse muscle groups that other tools label as one structure
(``covers`` lists what they contain).

Other tools' names for a value: ``label(v).aliases`` and ``find_by_alias(name, tool)`` (tools:
``totalsegmentator``, ``musclemap``, ``qmritools``). Label tables for viewers: ``to_json``,
``to_itksnap``, ``to_slicer`` and ``write_label_tables(folder, values)``; ``read_label_table`` reads
any of them (and other ITK-SNAP / Slicer tables) back. Source datasets' own numbers are mapped to
ontology names by ``muscle_pipeline.datasets``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

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
    # finer structures a coarse entry is made of (iliopsoas = iliacus + psoas major, compartments)
    covers: tuple[str, ...] = ()


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

    @property
    def display(self) -> str:
        """Human-readable name, e.g. ``"Soleus, left"``."""
        return self.structure.display if self.side is None else f"{self.structure.display}, {self.side}"

    @property
    def aliases(self) -> dict[str, str]:
        """This value's name in each other tool that labels the structure, e.g.
        ``{"totalsegmentator": "gluteus_maximus_left", "qmritools": "Gluteus maximus Left", ...}``."""
        out = {}
        for tool, names in TOOL_NAMES.items():
            if self.structure.name in names:
                out[tool] = _tool_label_name(tool, names[self.structure.name][0], self.side)
        return out


def _m(base, name, display, region, group, ni_dice=None, parent=None, aliases=(), covers=()):
    return Structure(base, name, display, "muscle", region, group, True, parent, ni_dice, tuple(aliases),
                     tuple(covers))


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
    # Fibularis tertius lies in the ANTERIOR compartment (deep fibular nerve) and is in effect a slip
    # of extensor digitorum longus; it is not one of the lateral-compartment fibulari.
    _m(38, "fibularis_tertius", "Fibularis tertius", "leg", "anterolateral_leg", parent="phalangeal_extensors"),
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
    # iliopsoas is TotalSegmentator's union of two Ni hip muscles, so its region is "hip" like theirs
    _m(60, "iliopsoas", "Iliopsoas (iliacus + psoas)", "hip", "iliopsoas", covers=("iliacus", "psoas_major")),
    Structure(61, "quadratus_lumborum", "Quadratus lumborum", "muscle", "trunk", None),
    Structure(62, "multifidus", "Multifidus", "muscle", "trunk", None),
    Structure(63, "erector_spinae", "Erector spinae", "muscle", "trunk", None),
    Structure(64, "autochthon", "Autochthonous back muscles", "muscle", "trunk", None,
              covers=("multifidus", "erector_spinae")),
    # --- tissues (unsided) ---
    Structure(70, "subcutaneous_fat", "Subcutaneous fat", "tissue", "body", None, sided=False),
    Structure(71, "skin", "Skin", "tissue", "body", None, sided=False),
    Structure(72, "intermuscular_fat", "Intermuscular fat", "tissue", "body", None, sided=False),
    # --- coarse muscle groups other tools label as one structure (TotalSegmentator, MuscleMap) ---
    # ``covers`` follows the anatomical compartments; which small muscles the other tools' annotators
    # put in (pectineus in the medial thigh, popliteus in the deep posterior leg) is not documented.
    _m(80, "gastrocnemius", "Gastrocnemius (both heads)", "leg", "posterior_leg_superficial",
       covers=("gastrocnemius_medial_head", "gastrocnemius_lateral_head")),
    _m(81, "leg_anterior_compartment", "Anterior compartment of the leg", "leg", "anterolateral_leg",
       covers=("tibialis_anterior", "phalangeal_extensors")),
    _m(82, "leg_deep_posterior_compartment", "Deep posterior compartment of the leg", "leg", "posterior_leg_deep",
       covers=("tibialis_posterior", "flexor_digitorum_longus", "flexor_hallucis_longus")),
    _m(83, "quadriceps_femoris", "Quadriceps femoris", "thigh", "quadriceps",
       covers=("rectus_femoris", "vastus_lateralis", "vastus_intermedius", "vastus_medialis")),
    _m(84, "thigh_medial_compartment", "Medial compartment of the thigh", "thigh", "adductors",
       covers=("adductor_longus", "adductor_brevis", "adductor_magnus", "gracilis")),
    _m(85, "thigh_posterior_compartment", "Posterior compartment of the thigh", "thigh", "hamstrings",
       covers=("biceps_femoris_long_head", "biceps_femoris_short_head", "semitendinosus", "semimembranosus")),
)

NI_MUSCLES: tuple[str, ...] = tuple(s.name for s in STRUCTURES if 1 <= s.base <= 35)

# Colours (right, left) per structure; one colour for unsided ones. Picked once by a greedy
# max–min CIEDE2000 search over CIELAB candidates (Ni muscles first, bones from pale tones,
# tissues from warm tones), then frozen here so a colour never changes when entries are added.
# The left colour is the right one's hue and chroma, 26 L* darker, so a viewer shows a pair as
# related but distinct. Smallest CIEDE2000 distance between any two labels (and background): 6.4.
# A new structure needs an entry here, more than 5 CIEDE2000 from every other colour (tested).
_COLOURS: dict[str, tuple[tuple[int, int, int], ...]] = {
    'gluteus_maximus': ((199, 249, 99), (125, 176, 17)),
    'gluteus_medius': ((255, 181, 223), (183, 112, 152)),
    'gluteus_minimus': ((108, 184, 238), (9, 116, 165)),
    'tensor_fasciae_latae': ((240, 158, 86), (162, 91, 19)),
    'iliacus': ((122, 222, 198), (44, 150, 129)),
    'psoas_major': ((236, 112, 101), (157, 43, 41)),
    'piriformis': ((147, 143, 206), (80, 79, 135)),
    'obturator_internus': ((220, 204, 138), (148, 134, 73)),
    'obturator_externus': ((207, 110, 236), (133, 38, 163)),
    'quadratus_femoris': ((132, 224, 141), (58, 152, 75)),
    'external_rotators': ((240, 152, 160), (165, 85, 94)),
    'rectus_femoris': ((165, 184, 120), (97, 116, 56)),
    'vastus_lateralis': ((131, 251, 254), (43, 177, 181)),
    'vastus_intermedius': ((186, 141, 91), (114, 77, 30)),
    'vastus_medialis': ((197, 164, 224), (127, 97, 153)),
    'sartorius': ((239, 105, 139), (161, 30, 75)),
    'gracilis': ((232, 159, 130), (156, 93, 67)),
    'adductor_longus': ((108, 152, 211), (29, 87, 141)),
    'adductor_brevis': ((124, 191, 145), (57, 122, 80)),
    'adductor_magnus': ((241, 237, 127), (166, 165, 58)),
    'pectineus': ((220, 168, 75), (144, 101, 0)),
    'biceps_femoris_long_head': ((246, 141, 218), (171, 71, 147)),
    'biceps_femoris_short_head': ((218, 126, 69), (140, 62, 3)),
    'semitendinosus': ((119, 161, 106), (54, 94, 44)),
    'semimembranosus': ((162, 173, 237), (92, 106, 165)),
    'gastrocnemius_medial_head': ((179, 134, 190), (110, 70, 121)),
    'gastrocnemius_lateral_head': ((120, 255, 194), (24, 182, 125)),
    'soleus': ((152, 255, 127), (75, 182, 58)),
    'popliteus': ((225, 110, 178), (150, 37, 110)),
    'tibialis_anterior': ((147, 155, 91), (80, 89, 29)),
    'tibialis_posterior': ((182, 216, 111), (111, 145, 44)),
    'flexor_digitorum_longus': ((255, 189, 151), (180, 120, 85)),
    'flexor_hallucis_longus': ((200, 174, 112), (128, 107, 49)),
    'fibulari': ((238, 200, 98), (162, 131, 28)),
    'phalangeal_extensors': ((206, 131, 111), (132, 66, 50)),
    'fibularis_longus': ((233, 153, 186), (159, 85, 118)),
    'fibularis_brevis': ((215, 168, 116), (141, 101, 53)),
    'fibularis_tertius': ((222, 150, 242), (149, 82, 169)),
    'extensor_digitorum_longus': ((139, 191, 94), (70, 122, 27)),
    'extensor_hallucis_longus': ((254, 99, 67), (171, 15, 4)),
    'gemellus_superior': ((208, 126, 151), (135, 60, 86)),
    'gemellus_inferior': ((87, 165, 128), (7, 97, 64)),
    'plantaris': ((93, 194, 171), (0, 124, 104)),
    'adductor_minimus': ((104, 196, 115), (25, 126, 51)),
    'psoas_minor': ((178, 129, 223), (107, 64, 151)),
    'femur': ((243, 243, 243), (193, 193, 193)),
    'tibia': ((162, 206, 219), (114, 157, 169)),
    'fibula': ((225, 250, 225), (175, 199, 175)),
    'hip_bone': ((249, 217, 239), (198, 168, 189)),
    'patella': ((231, 228, 197), (181, 178, 148)),
    'sacrum': ((222, 225, 255),),
    'iliopsoas': ((136, 179, 240), (62, 111, 167)),
    'quadratus_lumborum': ((238, 155, 144), (162, 88, 79)),
    'multifidus': ((206, 118, 202), (134, 50, 132)),
    'erector_spinae': ((210, 127, 126), (136, 62, 63)),
    'autochthon': ((169, 185, 79), (98, 117, 1)),
    'subcutaneous_fat': ((206, 126, 3),),
    'skin': ((254, 214, 166),),
    'intermuscular_fat': ((210, 184, 40),),
    'gastrocnemius': ((254, 129, 250), (178, 54, 177)),
    'leg_anterior_compartment': ((148, 224, 85), (74, 152, 0)),
    'leg_deep_posterior_compartment': ((106, 222, 216), (0, 150, 146)),
    'quadriceps_femoris': ((140, 140, 238), (67, 76, 165)),
    'thigh_medial_compartment': ((172, 147, 87), (102, 83, 25)),
    'thigh_posterior_compartment': ((212, 209, 100), (138, 139, 30)),
}


# Names other tools use for our structures (side-independent; the first is the tool's own
# spelling, further ones are variants seen in that tool). Sources: TotalSegmentator
# ``map_to_binary.py`` class maps (tasks total, total_mr, thigh_shoulder_muscles); MuscleMap model
# JSONs and docs/anatomy.md; QMRITools ``Muscles_leg.txt`` (its spellings "Satorius" and
# "Subcutanious fat" are kept as they are, because that is what its label files contain).
TOOL_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "totalsegmentator": {
        "gluteus_maximus": ("gluteus_maximus",),
        "gluteus_medius": ("gluteus_medius",),
        "gluteus_minimus": ("gluteus_minimus",),
        "iliopsoas": ("iliopsoas",),
        "autochthon": ("autochthon",),
        "femur": ("femur",),
        "hip_bone": ("hip",),
        "sacrum": ("sacrum",),
        "quadriceps_femoris": ("quadriceps_femoris",),
        "thigh_medial_compartment": ("thigh_medial_compartment",),
        "thigh_posterior_compartment": ("thigh_posterior_compartment",),
        "sartorius": ("sartorius",),
    },
    "musclemap": {
        "multifidus": ("multifidus", "thoracolumbar multifidus"),
        "erector_spinae": ("erector spinae",),
        "psoas_major": ("psoas major",),
        "quadratus_lumborum": ("quadratus lumborum",),
        "gluteus_minimus": ("gluteus minimus",),
        "gluteus_medius": ("gluteus medius",),
        "gluteus_maximus": ("gluteus maximus",),
        "tensor_fasciae_latae": ("tensor fasciae latae", "tensor fascia latae"),
        "iliacus": ("iliacus",),
        "hip_bone": ("pelvis", "ilium"),
        "sacrum": ("sacrum",),
        "femur": ("femur",),
        "vastus_lateralis": ("vastus lateralis",),
        "vastus_intermedius": ("vastus intermedius",),
        "vastus_medialis": ("vastus medialis",),
        "rectus_femoris": ("rectus femoris",),
        "sartorius": ("sartorius",),
        "gracilis": ("gracilis",),
        "semimembranosus": ("semimembranosus",),
        "semitendinosus": ("semitendinosus",),
        "biceps_femoris_long_head": ("biceps femoris long head",),
        "biceps_femoris_short_head": ("biceps femoris short head",),
        "adductor_magnus": ("adductor magnus",),
        "adductor_longus": ("adductor longus",),
        "adductor_brevis": ("adductor brevis",),
        "leg_anterior_compartment": ("anterior compartment",),
        "leg_deep_posterior_compartment": ("deep posterior compartment",),
        # the lateral compartment of the leg holds exactly fibularis longus and brevis
        "fibulari": ("lateral compartment",),
        "soleus": ("soleus",),
        "gastrocnemius": ("gastrocnemius",),
        "tibia": ("tibia",),
        "fibula": ("fibula",),
    },
    "qmritools": {
        "gastrocnemius_lateral_head": ("Lateral gastrocnemius",),
        "gastrocnemius_medial_head": ("Medial gastrocnemius",),
        "soleus": ("Soleus",),
        "plantaris": ("Plantaris",),
        "popliteus": ("Popliteus",),
        "flexor_digitorum_longus": ("Flexor digitorum longus",),
        "flexor_hallucis_longus": ("Flexor hallucis longus",),
        "tibialis_posterior": ("Tibialis posterior",),
        "fibularis_longus": ("Fibularis longus",),
        "fibularis_brevis": ("Fibularis brevis",),
        "tibialis_anterior": ("Tibialis anterior",),
        "extensor_digitorum_longus": ("Extensor digitorum longus",),
        "extensor_hallucis_longus": ("Extensor hallucis longus",),
        "fibularis_tertius": ("Fibularis tertius",),
        "biceps_femoris_long_head": ("Biceps femoris long",),
        "biceps_femoris_short_head": ("Biceps femoris short",),
        "semimembranosus": ("Semimembranosus",),
        "semitendinosus": ("Semitendinosus",),
        "adductor_magnus": ("Adductor magnus",),
        "adductor_minimus": ("Adductor minimus",),
        "adductor_longus": ("Adductor longus",),
        "adductor_brevis": ("Adductor brevis",),
        "gracilis": ("Gracilis",),
        "iliacus": ("Iliacus",),
        "psoas_major": ("Psoas major",),
        "psoas_minor": ("Psoas minor",),
        "vastus_lateralis": ("Vastus lateralis",),
        "vastus_intermedius": ("Vastus intermedius",),
        "vastus_medialis": ("Vastus medialis",),
        "rectus_femoris": ("Rectus femoris",),
        "sartorius": ("Satorius", "Sartorius"),
        "pectineus": ("Pectineus",),
        "gluteus_maximus": ("Gluteus maximus",),
        "gluteus_medius": ("Gluteus medius",),
        "gluteus_minimus": ("Gluteus minimus",),
        "tensor_fasciae_latae": ("Tensor fascia latae",),
        "piriformis": ("Piriformis",),
        "obturator_internus": ("Obturator internus",),
        "obturator_externus": ("Obturator externus",),
        "gemellus_inferior": ("Gemellus inferior",),
        "gemellus_superior": ("Gemellus superior",),
        "quadratus_femoris": ("Quadratus femoris",),
        "quadratus_lumborum": ("Quadratus lumborum",),
        # QMRITools' "Ilium" label covers the whole hip bone (its only pelvic bone besides the sacrum)
        "hip_bone": ("Ilium",),
        "femur": ("Femur",),
        "patella": ("Patella",),
        "tibia": ("Tibia",),
        "fibula": ("Fibula",),
        "sacrum": ("Sacrum",),
        "subcutaneous_fat": ("Subcutanious fat", "Subcutaneous fat"),
    },
}

# How each tool writes a side onto a structure name.
_SIDE_FORMAT = {
    "totalsegmentator": "{name}_{side}",
    "musclemap": "{name} {side}",
    "qmritools": "{name} {Side}",
}


def _tool_label_name(tool: str, name: str, side: str | None) -> str:
    if side is None:
        return name
    return _SIDE_FORMAT[tool].format(name=name, side=side, Side=side.capitalize())


def _color(structure_name: str, side: str | None) -> tuple[int, int, int]:
    colours = _COLOURS[structure_name]
    return colours[1] if side == "left" else colours[0]


@lru_cache(maxsize=None)
def all_labels() -> tuple[Label, ...]:
    """Every label value in the ontology, sorted by value."""
    out = []
    for s in STRUCTURES:
        if s.sided:
            out.append(Label(s.base, f"{s.name}_right", s, "right", _color(s.name, "right")))
            out.append(Label(s.base + LEFT_OFFSET, f"{s.name}_left", s, "left", _color(s.name, "left")))
        else:
            out.append(Label(s.base, s.name, s, None, _color(s.name, None)))
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


def structure_values(names: Iterable[str]) -> list[int]:
    """Every value of these structures: a sided one's right (base) and left value, an unsided one's
    base; sorted (what a model segmenting ``names`` can write)."""
    values = []
    for name in names:
        s = structure(name)
        values += [s.base, s.base + LEFT_OFFSET] if s.sided else [s.base]
    return sorted(values)


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


def parts_of(name: str) -> tuple[str, ...]:
    """The finer structures a coarse or grouped entry is made of, e.g. ``parts_of("fibulari")`` →
    ``("fibularis_longus", "fibularis_brevis")`` (its ``covers`` plus the entries naming it ``parent``)."""
    s = structure(name)
    return s.covers + tuple(t.name for t in STRUCTURES if t.parent == name and t.name not in s.covers)


# --------------------------------------------------------------------------- aliases of other tools

ONTOLOGY = "muscle_pipeline"  # pseudo-tool: our own names, display names and generic aliases
_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right", "rt": "right"}


def _normalize(name: str) -> str:
    """Lower case; runs of spaces, underscores, hyphens and punctuation become one ``_``; a leading
    index like ITK-SNAP's ``"13 Flexor hallucis longus Left"`` is dropped."""
    key = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    return re.sub(r"^\d+_(?=[a-z])", "", key)


def _split_side(key: str) -> tuple[str, str | None]:
    tokens = key.split("_")
    if len(tokens) > 1 and tokens[-1] in _SIDE_WORDS:
        return "_".join(tokens[:-1]), _SIDE_WORDS[tokens[-1]]
    if len(tokens) > 1 and tokens[0] in _SIDE_WORDS:
        return "_".join(tokens[1:]), _SIDE_WORDS[tokens[0]]
    return key, None


@lru_cache(maxsize=None)
def _alias_index() -> dict[str | None, dict[str, Structure]]:
    """``{tool: {normalized side-free name: Structure}}``; ``None`` holds the union of all tools.
    Raises if one name would mean two structures, so ``find_by_alias`` is never ambiguous."""
    per_tool: dict[str, dict[str, Structure]] = {ONTOLOGY: {}}
    for s in STRUCTURES:
        for alias in (s.name, s.display, *s.aliases):
            per_tool[ONTOLOGY][_normalize(alias)] = s
    for tool, names in TOOL_NAMES.items():
        per_tool[tool] = {_normalize(alias): structure(name) for name, aliases in names.items() for alias in aliases}
    union: dict[str, Structure] = {}
    for tool, table in per_tool.items():
        for key, s in table.items():
            if union.setdefault(key, s) is not s:
                raise ValueError(f"alias {key!r} ({tool}) means both {union[key].name} and {s.name}")
    return {**per_tool, None: union}


def alias_tools() -> tuple[str, ...]:
    """The tool names ``find_by_alias`` accepts (plus ``None`` for any)."""
    return (ONTOLOGY, *TOOL_NAMES)


def find_by_alias(name: str, tool: str | None = None) -> Label:
    """The label another tool calls ``name``, e.g. ``find_by_alias("hip_left", "totalsegmentator")``
    → ``hip_bone_left``, ``find_by_alias("Satorius Right", "qmritools")`` → ``sartorius_right``.

    Matching ignores case and treats spaces, underscores and hyphens alike; the side is read from
    a leading or trailing ``left/right/L/R`` word. ``tool=None`` searches our own names and every
    tool. Raises ``KeyError`` for unknown names, a missing side on a sided structure, or a side on
    an unsided one.
    """
    index = _alias_index()
    if tool not in index:
        raise KeyError(f"unknown tool {tool!r}; known: {', '.join(alias_tools())}")
    key = _normalize(name)
    found = index[tool].get(key)
    side = None
    if found is None:
        base, side = _split_side(key)
        found = index[tool].get(base)
    if found is None:
        raise KeyError(f"{name!r} is not a name {'any tool' if tool is None else tool} uses for an ontology structure")
    if found.sided and side is None:
        raise KeyError(f"{name!r} names {found.name} without a side (left/right)")
    if not found.sided and side is not None:
        raise KeyError(f"{name!r} gives a side to {found.name}, which has none")
    return label(found.name if side is None else f"{found.name}_{side}")


# --------------------------------------------------------------------------- label tables

def _select(labels: Iterable[Label | int | str] | None) -> list[Label]:
    if labels is None:
        return list(all_labels())
    chosen = {}
    for item in labels:
        if isinstance(item, Label):
            chosen[item.value] = item
        elif item != 0:  # background is written by every table anyway
            found = label(int(item) if not isinstance(item, str) else item)
            chosen[found.value] = found
    return [chosen[v] for v in sorted(chosen)]


def to_json(labels: Iterable[Label | int | str] | None = None) -> str:
    """The ontology (or the given labels) as JSON: one entry per value with name, side, region,
    stage-1 group, colour and the names other tools use."""
    entries = []
    for l in _select(labels):
        s = l.structure
        entries.append({
            "value": l.value,
            "name": l.name,
            "display": l.display,
            "structure": s.name,
            "side": l.side,
            "kind": s.kind,
            "region": s.region,
            "group": s.group,
            "parent": s.parent,
            "covers": list(parts_of(s.name)),
            "ni_dice": s.ni_dice,
            "color": list(l.color),
            "aliases": l.aliases,
        })
    document = {
        "format": "muscle_pipeline.labels",
        "version": 1,
        "background": 0,
        "side_convention": f"right (and unsided) = base value, left = base + {LEFT_OFFSET}; sides are the "
                           "subject's own, from the image header's patient axes",
        "labels": entries,
    }
    # one line per label keeps the file short enough to read and diff
    head = json.dumps({**document, "labels": []}, indent=1)[: -len("[]\n}")]
    body = ",\n".join("  " + json.dumps(e) for e in entries)
    return f"{head}[\n{body}\n ]\n}}\n"


_ITKSNAP_HEADER = """################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
# Written by muscle_pipeline: names are the muscle ontology's (right = base, left = base + 100)
################################################
"""


def _itksnap_line(value, rgb, alpha, visible, name):
    return f"{value:5d} {rgb[0]:5d} {rgb[1]:4d} {rgb[2]:4d} {alpha:8g} {visible:2d} {visible:2d}    \"{name}\"\n"


def to_itksnap(labels: Iterable[Label | int | str] | None = None) -> str:
    """An ITK-SNAP label description file (value 0 is ``"Clear Label"``)."""
    lines = [_ITKSNAP_HEADER, _itksnap_line(0, (0, 0, 0), 0, 0, "Clear Label")]
    lines += [_itksnap_line(l.value, l.color, 1, 1, l.name) for l in _select(labels)]
    return "".join(lines)


def to_slicer(labels: Iterable[Label | int | str] | None = None) -> str:
    """A 3D Slicer colour table (``.ctbl``): ``value name r g b a`` per line, 0 = background."""
    chosen = _select(labels)
    lines = ["# Color table file muscle_pipeline labels\n", f"# {len(chosen) + 1} values\n",
             "0 background 0 0 0 0\n"]
    lines += [f"{l.value} {l.name} {l.color[0]} {l.color[1]} {l.color[2]} 255\n" for l in chosen]
    return "".join(lines)


LABEL_TABLE_FILES = {"json": "labels.json", "itksnap": "labels_itksnap.txt", "slicer": "labels_slicer.ctbl"}


def write_label_tables(folder: str | Path, values: Iterable[int | str] | None = None) -> dict[str, Path]:
    """Write ``labels.json``, ``labels_itksnap.txt`` and ``labels_slicer.ctbl`` into ``folder`` for the
    given label values (an output folder carries only what its model outputs; ``None`` = all).
    Returns ``{"json"|"itksnap"|"slicer": path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = _select(values)
    writers = {"json": to_json, "itksnap": to_itksnap, "slicer": to_slicer}
    paths = {}
    for fmt, file_name in LABEL_TABLE_FILES.items():
        paths[fmt] = folder / file_name
        paths[fmt].write_text(writers[fmt](chosen), encoding="utf-8")
    return paths


# ----------------------------------------------------------------- reading label tables back

_ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+(\d+)\s+(\d+)\s+"(.*)"\s*$')


def parse_itksnap(text: str, source: str | Path | None = None) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{value: (label text, (r, g, b))}`` from an ITK-SNAP label description (value 0 included).
    Raises ``InputError`` naming ``source`` for a malformed line."""
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ITKSNAP_LINE.match(line)
        if not match:
            from muscle_pipeline.errors import InputError

            raise InputError(source, f"line {number} is not an ITK-SNAP label line: {line.strip()!r}")
        table[int(match[1])] = (match[8], (int(match[2]), int(match[3]), int(match[4])))
    return table


def parse_slicer(text: str, source: str | Path | None = None) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{value: (name, (r, g, b))}`` from a 3D Slicer colour table (value 0 included)."""
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 6 or not all(f.isdigit() for f in fields[:1] + fields[2:]):
            from muscle_pipeline.errors import InputError

            raise InputError(source, f"line {number} is not a Slicer colour-table line: {line.strip()!r}")
        table[int(fields[0])] = (fields[1], (int(fields[2]), int(fields[3]), int(fields[4])))
    return table


def parse_json(text: str, source: str | Path | None = None) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{value: (name, (r, g, b))}`` from a ``labels.json`` written by :func:`to_json`."""
    try:
        entries = json.loads(text)["labels"]
        return {int(e["value"]): (e["name"], tuple(int(c) for c in e["color"])) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        from muscle_pipeline.errors import InputError

        raise InputError(source, f"not a muscle_pipeline labels.json ({exc})") from None


def read_label_table(path: str | Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Read a label table written by :func:`write_label_tables` (or any ITK-SNAP ``.txt`` /
    Slicer ``.ctbl`` file): ``{value: (name, (r, g, b))}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        return parse_json(text, path)
    if path.suffix.lower() == ".ctbl" or text.lstrip().startswith("# Color table"):
        return parse_slicer(text, path)
    return parse_itksnap(text, path)
