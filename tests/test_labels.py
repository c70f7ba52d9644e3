"""The muscle ontology, its label-table exports, the dataset maps (on the real label files) and the
``labels`` command."""
from __future__ import annotations

import json
import re
import shlex

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.color import deltaE_ciede2000, rgb2lab

from muscle_pipeline import datasets
from muscle_pipeline import labels as L
from muscle_pipeline.cli import main
from muscle_pipeline.errors import InputError

# Published bases: a value, once published, never changes meaning (right = base, left = base + 100).
PUBLISHED_BASES = {
    "gluteus_maximus": 1, "gluteus_medius": 2, "gluteus_minimus": 3, "tensor_fasciae_latae": 4, "iliacus": 5,
    "psoas_major": 6, "piriformis": 7, "obturator_internus": 8, "obturator_externus": 9, "quadratus_femoris": 10,
    "external_rotators": 11, "rectus_femoris": 12, "vastus_lateralis": 13, "vastus_intermedius": 14,
    "vastus_medialis": 15, "sartorius": 16, "gracilis": 17, "adductor_longus": 18, "adductor_brevis": 19,
    "adductor_magnus": 20, "pectineus": 21, "biceps_femoris_long_head": 22, "biceps_femoris_short_head": 23,
    "semitendinosus": 24, "semimembranosus": 25, "gastrocnemius_medial_head": 26, "gastrocnemius_lateral_head": 27,
    "soleus": 28, "popliteus": 29, "tibialis_anterior": 30, "tibialis_posterior": 31, "flexor_digitorum_longus": 32,
    "flexor_hallucis_longus": 33, "fibulari": 34, "phalangeal_extensors": 35, "fibularis_longus": 36,
    "fibularis_brevis": 37, "fibularis_tertius": 38, "extensor_digitorum_longus": 39, "extensor_hallucis_longus": 40,
    "gemellus_superior": 41, "gemellus_inferior": 42, "plantaris": 43, "adductor_minimus": 44, "psoas_minor": 45,
    "femur": 50, "tibia": 51, "fibula": 52, "hip_bone": 53, "patella": 54, "sacrum": 55, "iliopsoas": 60,
    "quadratus_lumborum": 61, "multifidus": 62, "erector_spinae": 63, "autochthon": 64, "subcutaneous_fat": 70,
    "skin": 71, "intermuscular_fat": 72, "gastrocnemius": 80, "leg_anterior_compartment": 81,
    "leg_deep_posterior_compartment": 82, "quadriceps_femoris": 83, "thigh_medial_compartment": 84,
    "thigh_posterior_compartment": 85,
}

CALF_NAMES = {  # the reading documented in muscle_pipeline/datasets/qmritools_calf.json
    13: "gastrocnemius_medial_head", 15: "gastrocnemius_lateral_head", 17: "soleus", 19: "tibialis_anterior",
    21: "fibulari", 23: "phalangeal_extensors", 25: "tibialis_posterior",
}


# ----------------------------------------------------------------------------- the table itself

def test_published_values_never_change():
    assert L.value_of("gluteus_maximus_right") == 1
    assert L.value_of("soleus_left") == 128
    assert L.value_of("hip_bone_left") == 153
    assert L.value_of("sacrum") == 55
    assert L.name_of(160) == "iliopsoas_left"
    for name, base in PUBLISHED_BASES.items():
        s = L.structure(name)
        assert s.base == base, name
        if s.sided:
            assert L.value_of(f"{name}_right") == base and L.value_of(f"{name}_left") == base + L.LEFT_OFFSET
        else:
            assert L.value_of(name) == base


def test_values_and_names_unique_and_fit_uint8():
    all_labels = L.all_labels()
    values = [l.value for l in all_labels]
    names = [l.name for l in all_labels]
    assert len(set(values)) == len(values) and len(set(names)) == len(names)
    assert 0 not in values and max(values) <= 255
    assert len({s.base for s in L.STRUCTURES}) == len(L.STRUCTURES)
    assert all(s.base < L.LEFT_OFFSET for s in L.STRUCTURES)
    for l in all_labels:
        assert l.name == (l.structure.name if l.side is None else f"{l.structure.name}_{l.side}")
        assert l.region in ("hip", "thigh", "leg", "trunk", "body")


def _literature_ni_table(shared_data):
    text = (shared_data.parent / "reference" / "literature.md").read_text()
    section = text.split("## Ni et al.")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([A-Z][^|]+?) \| ([0-9.]+) \| ([0-9.]+) ± [0-9.]+ \|$", section, re.M)
    return {name: float(dice) for name, _, dice in rows}


def test_35_ni_muscles_match_the_paper_on_both_sides(shared_data):
    table = _literature_ni_table(shared_data)
    assert len(table) == 35 and len(L.NI_MUSCLES) == 35
    found = {}
    for paper_name, dice in table.items():
        right = L.find_by_alias(f"{paper_name} right")
        assert right.side == "right" and right.structure.base <= 35, paper_name
        assert L.mirror_value(right.value) == L.find_by_alias(f"{paper_name} left").value
        assert right.structure.ni_dice == dice, paper_name
        found[right.structure.name] = paper_name
    assert sorted(found) == sorted(L.NI_MUSCLES)


def test_every_muscle_has_a_stage1_group():
    assert len(L.STAGE1_GROUPS) == 10  # Ni et al.: 10 groups of about 4 adjacent muscles
    for s in L.STRUCTURES:
        if s.kind == "muscle" and s.region != "trunk":
            assert s.group in L.STAGE1_GROUPS, s.name
        elif s.kind == "muscle":
            assert s.group is None or s.group in L.STAGE1_GROUPS
        else:
            assert s.group is None, s.name
    per_group = {g: [n for n in L.NI_MUSCLES if L.structure(n).group == g] for g in L.STAGE1_GROUPS}
    assert all(2 <= len(members) <= 5 for members in per_group.values()), per_group


def test_parents_and_covers_are_consistent():
    for s in L.STRUCTURES:
        if s.parent is not None:
            parent = L.structure(s.parent)
            assert parent.name in L.NI_MUSCLES and parent.group == s.group and parent.region == s.region
        for part in s.covers:
            assert L.structure(part).kind == "muscle" and L.structure(part).sided == s.sided
    assert L.parts_of("fibulari") == ("fibularis_longus", "fibularis_brevis")
    assert set(L.parts_of("phalangeal_extensors")) == {"extensor_digitorum_longus", "extensor_hallucis_longus",
                                                       "fibularis_tertius"}
    assert L.parts_of("iliopsoas") == ("iliacus", "psoas_major")


def test_mirror_round_trip_and_swap_lut():
    lut = L.swap_sides_lut()
    for l in L.all_labels():
        mirrored = L.mirror_value(l.value)
        assert L.mirror_value(mirrored) == l.value
        assert lut[l.value] == mirrored
        other = L.label(mirrored)
        assert other.structure is l.structure
        assert other.side == {"left": "right", "right": "left", None: None}[l.side]
    assert L.mirror_value(0) == 0 and lut[0] == 0


def test_colours_distinct_and_sides_related():
    all_labels = L.all_labels()
    rgb = np.array([(0, 0, 0)] + [l.color for l in all_labels], dtype=float) / 255
    lab = rgb2lab(rgb[None])[0]
    distance = deltaE_ciede2000(lab[:, None, :], lab[None, :, :])
    np.fill_diagonal(distance, np.inf)
    assert distance.min() > 5.0  # clearly visible side by side (background included)
    for s in L.STRUCTURES:
        if not s.sided:
            continue
        right, left = (rgb2lab(np.array(L.label(f"{s.name}_{side}").color, float)[None, None] / 255)[0, 0]
                       for side in ("right", "left"))
        assert left[0] < right[0] - 15  # left is the darker shade ...
        hue = np.degrees(np.arctan2([right[2], left[2]], [right[1], left[1]]))
        if np.hypot(right[1], right[2]) > 10:  # ... of the same hue (bones are nearly grey)
            assert abs((hue[0] - hue[1] + 180) % 360 - 180) < 12, s.name


# ----------------------------------------------------------------------------- aliases

@pytest.mark.parametrize("name, tool, expected", [
    ("gluteus_maximus_left", "totalsegmentator", "gluteus_maximus_left"),
    ("iliopsoas_right", "totalsegmentator", "iliopsoas_right"),
    ("femur_left", "totalsegmentator", "femur_left"),
    ("hip_left", "totalsegmentator", "hip_bone_left"),
    ("autochthon_left", None, "autochthon_left"),
    ("thigh_posterior_compartment_right", "totalsegmentator", "thigh_posterior_compartment_right"),
    ("multifidus right", "musclemap", "multifidus_right"),
    ("thoracolumbar multifidus left", "musclemap", "multifidus_left"),
    ("lateral compartment left", "musclemap", "fibulari_left"),
    ("Lateral gastrocnemius Left", "qmritools", "gastrocnemius_lateral_head_left"),
    ("Satorius Left", "qmritools", "sartorius_left"),
    ("Tensor fascia latae Right", "qmritools", "tensor_fasciae_latae_right"),
    ("85 Gemellus inferior  Left", "qmritools", "gemellus_inferior_left"),
    ("Sacrum", "qmritools", "sacrum"),
    ("GLUTEUS-MAXIMUS   left", None, "gluteus_maximus_left"),
    ("Gluteus_Maximus_Left", None, "gluteus_maximus_left"),
    ("L psoas major", None, "psoas_major_left"),
    ("Biceps femoris: long head, R", None, "biceps_femoris_long_head_right"),
    ("soleus_left", "muscle_pipeline", "soleus_left"),
])
def test_find_by_alias(name, tool, expected):
    assert L.find_by_alias(name, tool).name == expected


@pytest.mark.parametrize("name, tool", [
    ("spleen", None),                     # not in the ontology
    ("gluteus maximus", None),            # sided structure without a side
    ("sacrum left", None),                # side on an unsided structure
    ("Satorius Left", "totalsegmentator"),  # a QMRITools spelling is not a TotalSegmentator name
    ("soleus_left", "no_such_tool"),
])
def test_find_by_alias_rejects(name, tool):
    with pytest.raises(KeyError):
        L.find_by_alias(name, tool)


def test_every_published_alias_finds_its_label():
    for l in L.all_labels():
        assert L.find_by_alias(l.name) == l
        assert L.find_by_alias(l.display) == l
        for tool, alias in l.aliases.items():
            assert L.find_by_alias(alias, tool) == l, (tool, alias)
            assert L.find_by_alias(alias) == l


# ----------------------------------------------------------------------------- exports

def _parse_itksnap_independently(text):
    table = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            idx, r, g, b, alpha, vis, mesh, name = shlex.split(line)
            table[int(idx)] = (name, (int(r), int(g), int(b)), float(alpha), int(vis), int(mesh))
    return table


def test_itksnap_export_parses_back():
    text = L.to_itksnap()
    assert text.startswith("####") and "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in text
    table = _parse_itksnap_independently(text)
    assert table.pop(0) == ("Clear Label", (0, 0, 0), 0.0, 0, 0)
    assert table == {l.value: (l.name, l.color, 1.0, 1, 1) for l in L.all_labels()}
    assert L.parse_itksnap(text) == {0: ("Clear Label", (0, 0, 0)), **{v: t[:2] for v, t in table.items()}}


def test_itksnap_parser_reads_the_real_qmritools_table(shared_data):
    path = shared_data / "qmritools" / "Muscles_leg_itksnap_labels_reference.txt"
    table = L.read_label_table(path)
    independent = _parse_itksnap_independently(path.read_text())
    assert table == {v: t[:2] for v, t in independent.items()}
    assert table[0] == ("Clear Label", (0, 0, 0))
    assert table[63] == ("63 Satorius Left", (203, 193, 0))
    assert table[151][0] == "151 Subcutanious fat"


def test_itksnap_parser_names_the_file_on_a_bad_line(tmp_path):
    bad = tmp_path / "broken.txt"
    bad.write_text('    0 0 0 0 0 0 0 "Clear Label"\n    1 255 0 "no blue"\n')
    with pytest.raises(InputError, match="broken.txt"):
        L.read_label_table(bad)


def test_slicer_export_parses_back():
    text = L.to_slicer()
    lines = text.splitlines()
    assert lines[0].startswith("# Color table file")
    table = {}
    for line in lines:
        if not line.startswith("#"):
            value, name, r, g, b, a = line.split()
            table[int(value)] = (name, (int(r), int(g), int(b)), int(a))
    assert table.pop(0) == ("background", (0, 0, 0), 0)
    assert table == {l.value: (l.name, l.color, 255) for l in L.all_labels()}
    assert L.parse_slicer(text) == {0: ("background", (0, 0, 0)), **{v: t[:2] for v, t in table.items()}}


def test_json_export_parses_back():
    document = json.loads(L.to_json())
    assert document["background"] == 0
    by_value = {e["value"]: e for e in document["labels"]}
    assert sorted(by_value) == [l.value for l in L.all_labels()]
    for l in L.all_labels():
        e = by_value[l.value]
        assert (e["name"], tuple(e["color"]), e["side"], e["region"], e["group"]) == \
               (l.name, l.color, l.side, l.region, l.group)
        assert e["aliases"] == l.aliases
    assert by_value[101]["aliases"]["totalsegmentator"] == "gluteus_maximus_left"
    assert by_value[116]["aliases"]["qmritools"] == "Satorius Left"


def test_write_label_tables_for_a_subset(tmp_path):
    values = [0, 28, 128, 55, 30]
    paths = L.write_label_tables(tmp_path / "case", values)
    assert {p.name for p in paths.values()} == {"labels.json", "labels_itksnap.txt", "labels_slicer.ctbl"}
    expected = {v: (L.name_of(v), L.label(v).color) for v in (28, 30, 55, 128)}
    assert L.read_label_table(paths["json"]) == expected
    assert L.read_label_table(paths["itksnap"]) == {0: ("Clear Label", (0, 0, 0)), **expected}
    assert L.read_label_table(paths["slicer"]) == {0: ("background", (0, 0, 0)), **expected}
    with pytest.raises(KeyError):
        L.write_label_tables(tmp_path / "bad", [99])


# ----------------------------------------------------------------------------- dataset maps

def test_every_dataset_map_is_valid_and_names_exist():
    names = datasets.available_datasets()
    assert {"qmritools_calf", "totalsegmentator_total", "totalsegmentator_total_mr",
            "musclemap_lumbar"} <= set(names)
    for name in names:
        info = datasets.dataset_info(name)
        assert info["name"] == name and info["licence"] and len(info["method"]) > 40
        mapping = datasets.dataset_map(name)
        assert mapping and all(L.label(n).name == n for n in mapping.values())
        assert len(set(mapping.values())) == len(mapping)  # no two source values merge silently
        assert not set(info.get("unmapped", {})) & {str(v) for v in mapping}


@pytest.mark.parametrize("name, file", [("totalsegmentator_total", "labels_total.json"),
                                        ("totalsegmentator_total_mr", "labels_total_mr.json")])
def test_totalsegmentator_maps_cover_every_ontology_class(shared_data, name, file):
    classes = {int(v): n for v, n in json.loads((shared_data / "totalsegmentator" / file).read_text()).items()}
    mapping = datasets.dataset_map(name)
    wanted = re.compile(r"^(gluteus_(maximus|medius|minimus)|iliopsoas|autochthon|femur|hip)_(left|right)$|^sacrum$")
    expected = {v for v, n in classes.items() if wanted.match(n)}
    assert set(mapping) == expected and len(expected) == 15
    for value, ts_name in classes.items():
        if value in mapping:
            assert mapping[value] == L.find_by_alias(ts_name, "totalsegmentator").name
            assert mapping[value] == ts_name.replace("hip_", "hip_bone_")


def test_musclemap_and_qmritools_leg_maps(shared_data):
    assert datasets.dataset_map("musclemap_lumbar") == {
        1: "multifidus_right", 2: "multifidus_left", 3: "erector_spinae_right", 4: "erector_spinae_left",
        5: "psoas_major_right", 6: "psoas_major_left", 7: "quadratus_lumborum_right", 8: "quadratus_lumborum_left"}
    reference = L.read_label_table(shared_data / "qmritools" / "Muscles_leg_itksnap_labels_reference.txt")
    leg = datasets.dataset_map("qmritools_leg")
    assert set(leg) == set(reference) - {0, 111, 112}  # "Bones feet" has no ontology structure
    for value, name in leg.items():
        assert name == L.find_by_alias(reference[value][0], "qmritools").name
        assert name.endswith("_left") == reference[value][0].rstrip().endswith("Left")


def test_real_musclemap_label_file_maps_through(shared_data):
    seg = nib.load(shared_data / "musclemap" / "lumbar_mr_labeled" / "image_dseg.nii.gz")
    source = np.asarray(seg.dataobj)
    mapped, dropped = datasets.map_labels(source, "musclemap_lumbar", return_dropped=True)
    assert dropped == set()
    assert {L.name_of(v) for v in np.unique(mapped) if v} == set(datasets.dataset_map("musclemap_lumbar").values())
    # the image is oblique LPS on disk; nibabel's affine gives RAS+ world, where left is at smaller x
    for base in ("multifidus", "erector_spinae", "psoas_major", "quadratus_lumborum"):
        x = {side: _world_centroid(mapped == L.value_of(f"{base}_{side}"), seg.affine)[0]
             for side in ("left", "right")}
        assert x["left"] < x["right"], base


def _world_centroid(mask, affine):
    return nib.affines.apply_affine(affine, np.array(ndimage.center_of_mass(mask)))


def test_real_calf_labels_map_to_seven_right_leg_muscles(shared_data):
    folder = shared_data / "qmritools" / "calf_dti_labeled_half"
    seg = nib.load(folder / "labels_x80-160.nii.gz")
    source = np.asarray(seg.dataobj)
    # voxel counts as documented in SOURCES.md
    sources_md = (shared_data / "SOURCES.md").read_text()
    documented = {int(v): int(c) for v, c in re.findall(r"(\d+):(\d+)", re.search(r"Voxel counts: ([^.]+)\.",
                                                                                 sources_md)[1])}
    values, counts = np.unique(source, return_counts=True)
    assert dict(zip(values[1:].tolist(), counts[1:].tolist())) == documented
    mapped, dropped = datasets.map_labels(source, "qmritools_calf", return_dropped=True)
    assert dropped == set() and mapped.dtype == np.uint8
    assert {L.name_of(v) for v in np.unique(mapped) if v} == {f"{n}_right" for n in CALF_NAMES.values()}
    for value, name in CALF_NAMES.items():
        assert np.array_equal(mapped == L.value_of(f"{name}_right"), source == value)
        assert datasets.dataset_map("qmritools_calf")[value + 1] == f"{name}_left"
    # the side comes from the header: every labelled voxel of this half lies at world x >= 0 (RAS: right)
    world_x = nib.affines.apply_affine(seg.affine, np.argwhere(source > 0))[:, 0]
    assert nib.aff2axcodes(seg.affine) == ("R", "A", "S") and world_x.min() >= 0


def test_real_calf_label_positions_fit_the_anatomy(shared_data):
    """The anatomical reading of the calf labels, pinned on the real label map (RAS mm; this is a
    right leg, so lateral = larger x and the other leg lies at x < 0)."""
    seg = nib.load(shared_data / "qmritools" / "calf_dti_labeled_half" / "labels_x80-160.nii.gz")
    source = np.asarray(seg.dataobj)
    centre = {name: _world_centroid(source == value, seg.affine) for value, name in CALF_NAMES.items()}
    x = {n: c[0] for n, c in centre.items()}
    y = {n: c[1] for n, c in centre.items()}
    assert max(y, key=y.get) == "tibialis_anterior"  # most anterior
    assert max(x, key=x.get) == "fibulari"  # most lateral
    assert min(y, key=y.get) == "gastrocnemius_lateral_head"  # most posterior, superficial
    assert min(x, key=x.get) == "gastrocnemius_medial_head"  # most medial
    assert x["gastrocnemius_medial_head"] < x["gastrocnemius_lateral_head"]
    assert y["tibialis_posterior"] > y["soleus"]  # deep to the soleus ...
    assert x["tibialis_posterior"] < x["phalangeal_extensors"]  # ... and medial to the anterior extensors
    # superior is +z: the lateral gastrocnemius head shrinks distally, the soleus grows distally
    area = {name: (source == value).sum(axis=(0, 1)) for value, name in CALF_NAMES.items()}
    assert area["gastrocnemius_lateral_head"][0] * 3 < area["gastrocnemius_lateral_head"][-1]
    assert area["soleus"][0] > 2 * area["soleus"][-1]


def test_real_totalsegmentator_sides_in_world_coordinates(shared_data):
    seg = nib.load(shared_data / "totalsegmentator" / "ct_abdomen_pelvis" / "example_seg_fast_force_split.nii.gz")
    source = np.asarray(seg.dataobj)
    mapped, dropped = datasets.map_labels(source, "totalsegmentator_total", return_dropped=True)
    present = set(np.unique(source).tolist()) - {0}
    assert dropped == present - set(datasets.dataset_map("totalsegmentator_total"))
    assert 21 in dropped and 25 not in dropped  # urinary bladder dropped, sacrum kept
    assert (mapped[np.isin(source, list(dropped))] == 0).all()
    for base in ("femur", "hip_bone", "gluteus_maximus", "gluteus_medius", "gluteus_minimus", "iliopsoas",
                 "autochthon"):
        left = _world_centroid(mapped == L.value_of(f"{base}_left"), seg.affine)
        right = _world_centroid(mapped == L.value_of(f"{base}_right"), seg.affine)
        assert left[0] < right[0] - 20, base  # RAS+: the subject's left is at smaller x
    assert (mapped == L.value_of("femur_left")).sum() == (source == 75).sum() == 4488


def test_map_labels_keeps_tensor_type_and_zeroes_unknown_values():
    source = torch.tensor([[0, 13, 14], [250, 25, 26]], dtype=torch.int32)
    mapped, dropped = datasets.map_labels(source, "qmritools_calf", return_dropped=True)
    assert isinstance(mapped, torch.Tensor) and mapped.dtype == torch.uint8
    assert mapped.tolist() == [[0, 26, 126], [0, 31, 131]] and dropped == {250}
    with pytest.raises(ValueError):
        datasets.map_labels(np.array([0.5, 13.0]), "qmritools_calf")
    with pytest.raises(KeyError):
        datasets.dataset_map("no_such_dataset")


# ----------------------------------------------------------------------------- command line

def test_cli_prints_the_ontology_in_each_format(capsys):
    assert main(["labels"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(L.to_json())
    assert main(["labels", "--format", "itksnap"]) == 0
    assert L.parse_itksnap(capsys.readouterr().out) == L.parse_itksnap(L.to_itksnap())
    assert main(["labels", "--format", "slicer"]) == 0
    table = L.parse_slicer(capsys.readouterr().out)
    assert len(table) == len(L.all_labels()) + 1 and table[128] == ("soleus_left", L.label(128).color)


def test_cli_datasets(capsys, tmp_path):
    assert main(["labels", "--list-datasets"]) == 0
    listed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == datasets.available_datasets()
    assert main(["labels", "--dataset", "qmritools_calf", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {int(k): v for k, v in printed.items()} == datasets.dataset_map("qmritools_calf")
    assert printed["17"] == "soleus_right" and printed["18"] == "soleus_left"
    assert main(["labels", "--dataset", "musclemap_lumbar", "--format", "slicer"]) == 0
    table = L.parse_slicer(capsys.readouterr().out)
    assert set(table) == {0} | {L.value_of(n) for n in datasets.dataset_map("musclemap_lumbar").values()}
    assert main(["labels", "--dataset", "qmritools_calf", "--write", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.split()) == 3
    written = L.read_label_table(tmp_path / "labels_slicer.ctbl")
    assert set(written) == {0} | {L.value_of(n) for n in datasets.dataset_map("qmritools_calf").values()}
    assert written[27] == ("gastrocnemius_lateral_head_right", L.label(27).color)
    assert main(["labels", "--dataset", "no_such_dataset"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
