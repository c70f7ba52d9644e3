"""Evaluation on the real TotalSegmentator CT label map against a perturbed copy of itself, and
method comparison / pairing / grid checks on small synthetic maps."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from muscle_pipeline import labels as L
from muscle_pipeline.cli import main as cli_main
from muscle_pipeline.errors import InputError, UnsupportedImageError
from muscle_pipeline.evaluation import (
    case_id_of,
    collect_label_files,
    compare_methods,
    evaluate_pairs,
    pair_cases,
    read_csv,
    read_label_map,
)

TS_SEG = "totalsegmentator/ct_abdomen_pelvis/example_seg_fast_force_split.nii.gz"
ERODED, SHIFTED = 80, 88  # gluteus_maximus_left, iliopsoas_left in TotalSegmentator's numbering


@pytest.fixture(scope="module")
def ts_case(shared_data, tmp_path_factory):
    """ref/ct1.nii.gz = the real map; pred/ct1.nii.gz = the same with label 80 eroded by one
    voxel and label 88 moved 2 voxels along x (only onto background), the rest untouched."""
    root = tmp_path_factory.mktemp("ts_eval")
    image = nib.load(str(shared_data / TS_SEG))
    ref = np.asarray(image.dataobj)
    pred = ref.copy()
    eroded_mask = ref == ERODED
    pred[eroded_mask & ~ndimage.binary_erosion(eroded_mask)] = 0
    moving = ref == SHIFTED
    pred[moving] = 0
    pred[np.roll(moving, 2, axis=0) & ((ref == 0) | moving)] = SHIFTED
    for folder, data in (("ref", ref), ("pred", pred)):
        (root / folder).mkdir()
        nib.save(nib.Nifti1Image(data, image.affine, image.header), str(root / folder / "ct1.nii.gz"))
    out = root / "out"
    code = cli_main(
        ["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "ref"), "-o", str(out),
         "--dataset", "totalsegmentator_total"]
    )
    assert code == 0
    return {"root": root, "ref": ref, "pred": pred, "out": out, "voxel_ml": float(np.prod(image.header.get_zooms()[:3])) / 1000}


def test_dice_below_one_exactly_where_perturbed(ts_case):
    rows = read_csv(ts_case["out"] / "metrics.csv")
    present = sorted(int(v) for v in np.unique(ts_case["ref"]) if v != 0)
    assert [r["label"] for r in rows] == present and {r["case"] for r in rows} == {"ct1"}
    by_label = {r["label"]: r for r in rows}
    assert by_label[ERODED]["dice"] < 1 and by_label[SHIFTED]["dice"] < 1
    for value, row in by_label.items():
        if value not in (ERODED, SHIFTED):
            assert row["dice"] == 1.0 and row["asd_mm"] == 0.0 and row["hd95_mm"] == 0.0, value


def test_distances_and_volumes_in_mm_and_ml(ts_case):
    by_label = {r["label"]: r for r in read_csv(ts_case["out"] / "metrics.csv")}
    eroded, shifted = by_label[ERODED], by_label[SHIFTED]
    # 3 mm voxels: erosion moves the surface by one voxel, the shift by two (6 mm)
    assert 0 < eroded["hd95_mm"] <= 3.0 * math.sqrt(3) + 1e-6 and 0 < eroded["asd_mm"] <= 3.0 * math.sqrt(3)
    assert 0 < shifted["hd95_mm"] <= 6.0 + 1e-6
    voxel_ml = ts_case["voxel_ml"]
    assert eroded["volume_ref_ml"] == pytest.approx(np.count_nonzero(ts_case["ref"] == ERODED) * voxel_ml)
    assert eroded["volume_pred_ml"] == pytest.approx(np.count_nonzero(ts_case["pred"] == ERODED) * voxel_ml)
    expected_error = (eroded["volume_pred_ml"] - eroded["volume_ref_ml"]) / eroded["volume_ref_ml"] * 100
    assert eroded["volume_error_pct"] == pytest.approx(expected_error) and expected_error < 0
    assert eroded["name"] == "gluteus_maximus_left" and shifted["name"] == "iliopsoas_left"


def test_summary_and_boxplot_written(ts_case):
    summary = read_csv(ts_case["out"] / "summary.csv")
    assert summary[-1]["label"] == "all" and summary[-1]["n"] == len(summary) - 1
    by_label = {r["label"]: r for r in summary}
    assert by_label[ERODED]["dice_mean"] < 1 and by_label[1]["dice_mean"] == 1.0
    assert math.isnan(by_label[1]["dice_sd"])  # one case: no spread
    with Image.open(ts_case["out"] / "dice_boxplot.png") as png:
        assert png.format == "PNG" and png.size[0] > 600 and png.size[1] > 300
        png.verify()


# --------------------------------------------------------------------------------------------
def _write(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 4.0, 1.0]) if affine is None else affine), str(path))
    return path


def _phantom(shift: int = 0) -> np.ndarray:
    labels = np.zeros((24, 24, 12), np.uint8)
    labels[4 + shift:12 + shift, 4:12, 2:10] = 28  # soleus_right
    labels[16:22, 4:20, 2:10] = 128  # soleus_left (clear of the shifted right one)
    return labels


def test_grid_mismatch_names_both_files(tmp_path):
    ref = _write(tmp_path / "ref.nii.gz", _phantom())
    moved = np.diag([1.5, 1.5, 4.0, 1.0])
    moved[0, 3] = 10.0
    pred = _write(tmp_path / "pred.nii.gz", _phantom(), moved)
    with pytest.raises(InputError) as err:
        evaluate_pairs([(pred, ref)])
    assert "pred.nii.gz" in str(err.value) and "ref.nii.gz" in str(err.value) and "grid" in str(err.value)
    cropped = _write(tmp_path / "small.nii.gz", _phantom()[:20])
    with pytest.raises(InputError, match="shape"):
        evaluate_pairs([(cropped, ref)])


def test_non_integer_map_rejected(tmp_path):
    path = _write(tmp_path / "prob.nii.gz", np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(UnsupportedImageError, match="integers"):
        read_label_map(path)


def test_pairing_by_case_id_and_pipeline_folders(tmp_path):
    for case in ("a", "b"):
        _write(tmp_path / "pred" / case / "segmentation.nii.gz", _phantom())  # pipeline output layout
        _write(tmp_path / "ref" / f"{case}.nii.gz", _phantom())
    _write(tmp_path / "ref" / "c.nii.gz", _phantom())
    assert case_id_of(tmp_path / "pred" / "a" / "segmentation.nii.gz") == "a"
    preds, refs = collect_label_files(tmp_path / "pred"), collect_label_files(tmp_path / "ref")
    assert sorted(preds) == ["a", "b"] and sorted(refs) == ["a", "b", "c"]
    with pytest.raises(InputError, match="c.nii.gz"):
        pair_cases(preds, refs)
    pairs = pair_cases(preds, refs, allow_unmatched=True)
    assert sorted(pairs) == ["a", "b"] and pairs["a"][1] == tmp_path / "ref" / "a.nii.gz"
    rows = evaluate_pairs(pairs, labels=[28, 128, 5])
    assert [(r["case"], r["label"]) for r in rows] == [(c, v) for c in "ab" for v in (28, 128, 5)]
    assert rows[0]["name"] == "soleus_right" and rows[1]["name"] == "soleus_left"
    assert math.isnan(rows[2]["dice"])  # value 5 is in neither map


def test_compare_methods_pairs_cases(tmp_path):
    methods = {"good": {}, "shifted": {}}
    for i, case in enumerate(("c1", "c2", "c3")):
        ref = _write(tmp_path / "ref" / f"{case}.nii.gz", _phantom())
        methods["good"][case] = (_write(tmp_path / "good" / f"{case}.nii.gz", _phantom()), ref)
        methods["shifted"][case] = (_write(tmp_path / "shifted" / f"{case}.nii.gz", _phantom(shift=i + 1)), ref)
    out = tmp_path / "cmp"
    rows = compare_methods(methods, out_dir=out)
    assert {r["method"] for r in rows} == {"good", "shifted"} and len(rows) == 2 * 3 * 2
    tests = {(t["label"]): t for t in read_csv(out / "paired_tests.csv")}
    # soleus_right: Dice 1 vs (8-k)/8 for k = 1, 2, 3 voxels of shift
    assert tests[28]["n_pairs"] == 3
    assert tests[28]["mean_difference"] == pytest.approx(np.mean([1 / 8, 2 / 8, 3 / 8]), abs=1e-6)
    assert tests[128]["mean_difference"] == 0.0 and math.isnan(tests[128]["wilcoxon_p"])
    # "all" pairs per-case means over both labels: differences k/8 / 2
    assert tests["all"]["n_pairs"] == 3
    assert tests["all"]["mean_difference"] == pytest.approx(np.mean([1 / 16, 2 / 16, 3 / 16]), abs=1e-6)
    summary = read_csv(out / "comparison_summary.csv")
    assert [(r["method"], r["label"]) for r in summary] == [
        (m, v) for m in ("good", "shifted") for v in (28, 128, "all")
    ]
    assert (out / "comparison_metrics.csv").is_file()
    with Image.open(out / "dice_comparison.png") as png:
        assert png.format == "PNG"
        png.verify()


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_maps_read_as_their_nifti_twin(tmp_path, suffix):
    """The same map on an oblique, flipped grid, stored by SimpleITK (LPS) and by nibabel (RAS),
    reads to the same array and RAS affine, and scores Dice 1 against its NIfTI twin."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    labels = np.zeros((12, 10, 8), dtype=np.uint8)
    labels[2:7, 3:8, 1:6] = 5
    labels[7:11, 1:4, 2:7] = 9
    labels[rng.random(labels.shape) < 0.02] = 3
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, -1.1, 3.0])  # y stored flipped
    affine[:3, 3] = [-40.0, 25.0, 110.0]
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "ref.nii.gz")

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(labels.transpose())  # (x, y, z) -> SimpleITK's (z, y, x)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(tmp_path / f"pred{suffix}"))

    array, read_affine = read_label_map(tmp_path / f"pred{suffix}")
    assert np.array_equal(array, labels)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)
    rows = evaluate_pairs({"case": (tmp_path / f"pred{suffix}", tmp_path / "ref.nii.gz")})
    assert {row["label"] for row in rows} >= {3, 5, 9}
    assert all(row["dice"] == pytest.approx(1.0) for row in rows)


# --------------------------------------------------------------------------------------------
# References in TotalSegmentator's own numbers (--reference-map): the real pelvis CT's map
GMIN_LEFT, ILIOPSOAS_RIGHT = 103, 60  # ontology values
VASTUS_LATERALIS_RIGHT = L.value_of("vastus_lateralis_right")


@pytest.fixture(scope="module")
def ts_reference(shared_data, tmp_path_factory):
    """The real TotalSegmentator map as stored (its numbers) and mapped to the ontology, plus an
    altered ontology copy: gluteus minimus left removed, iliopsoas right moved 2 voxels along x
    (onto background only), and a vastus lateralis blob the reference cannot label."""
    from muscle_pipeline.datasets import map_labels

    root = tmp_path_factory.mktemp("ts_refmap")
    image = nib.load(str(shared_data / TS_SEG))
    mapped = np.asarray(map_labels(np.asarray(image.dataobj).astype(np.int64), "totalsegmentator_total"))
    altered = mapped.copy()
    altered[altered == GMIN_LEFT] = 0
    moving = mapped == ILIOPSOAS_RIGHT
    altered[moving] = 0
    altered[np.roll(moving, 2, axis=0) & ((mapped == 0) | moving)] = ILIOPSOAS_RIGHT
    blob = np.zeros_like(altered, dtype=bool)
    blob[5:9, 5:9, 0:4] = True
    assert not mapped[blob].any()
    altered[blob] = VASTUS_LATERALIS_RIGHT
    paths = {"ref": root / "ref" / "ct1.nii.gz", "same": root / "same" / "ct1.nii.gz", "altered": root / "altered" / "ct1.nii.gz"}
    for key, data in (("ref", np.asarray(image.dataobj)), ("same", mapped), ("altered", altered)):
        paths[key].parent.mkdir()
        nib.save(nib.Nifti1Image(data, image.affine, image.header), str(paths[key]))
    return {"root": root, "mapped": mapped, **paths}


def test_reference_map_scores_the_mapped_reference_as_perfect(ts_reference):
    rows = evaluate_pairs([(ts_reference["same"], ts_reference["ref"])], reference_map="totalsegmentator_total",
                          distances=False)
    present = sorted(int(v) for v in np.unique(ts_reference["mapped"]) if v)
    assert [r["label"] for r in rows] == present and len(present) >= 10
    assert all(r["dice"] == 1.0 for r in rows), [(r["name"], r["dice"]) for r in rows if r["dice"] != 1.0]
    assert rows.not_scored == []
    # without the map the same pair scores nothing: TotalSegmentator's numbers read as ontology values
    unmapped = evaluate_pairs([(ts_reference["same"], ts_reference["ref"])], distances=False)
    assert np.nanmean([r["dice"] for r in unmapped]) < 0.1


def test_reference_map_through_the_cli_on_an_altered_copy(ts_reference, capsys):
    out = ts_reference["root"] / "out"
    code = cli_main(["evaluate", "--pred", str(ts_reference["altered"]), "--ref", str(ts_reference["ref"]),
                     "-o", str(out), "--reference-map", "totalsegmentator_total", "--no-distances"])
    printed = capsys.readouterr().out
    assert code == 0
    by_label = {r["label"]: r for r in read_csv(out / "metrics.csv")}
    assert by_label[GMIN_LEFT]["dice"] == 0.0 and by_label[GMIN_LEFT]["volume_pred_ml"] == 0.0  # prediction lacks it
    assert 0 < by_label[ILIOPSOAS_RIGHT]["dice"] < 1
    assert {v for v, r in by_label.items() if r["dice"] != 1.0} == {GMIN_LEFT, ILIOPSOAS_RIGHT}
    assert VASTUS_LATERALIS_RIGHT not in by_label  # the reference cannot label it: not a false positive
    skipped = read_csv(out / "not_scored.csv")
    assert [(r["label"], r["name"]) for r in skipped] == [(VASTUS_LATERALIS_RIGHT, "vastus_lateralis_right")]
    assert skipped[0]["volume_pred_ml"] == pytest.approx(64 * 27 / 1000) and "does not label" in skipped[0]["reason"]
    assert "not scored" in printed and "vastus_lateralis_right" in printed and "totalsegmentator_total" in printed


def test_reference_map_merges_parts_of_a_labelled_whole(ts_reference, tmp_path):
    """iliacus + psoas major (lower_limb_35's values) score as TotalSegmentator's iliopsoas."""
    split = ts_reference["mapped"].copy()
    for side, offset in (("right", 0), ("left", 100)):
        whole = np.argwhere(split == ILIOPSOAS_RIGHT + offset)
        upper = whole[whole[:, 2] > np.median(whole[:, 2])]
        split[split == ILIOPSOAS_RIGHT + offset] = L.value_of(f"iliacus_{side}")
        split[tuple(upper.T)] = L.value_of(f"psoas_major_{side}")
    pred = tmp_path / "ct1.nii.gz"
    nib.save(nib.Nifti1Image(split, nib.load(str(ts_reference["ref"])).affine), str(pred))
    rows = evaluate_pairs([(pred, ts_reference["ref"])], reference_map="totalsegmentator_total", distances=False)
    assert all(r["dice"] == 1.0 for r in rows)
    assert {r["name"] for r in rows.not_scored} == {"iliacus_right", "psoas_major_right", "iliacus_left", "psoas_major_left"}
    assert all("part of iliopsoas" in r["reason"] for r in rows.not_scored)


def test_unknown_reference_map_is_one_clear_error(ts_reference, tmp_path, capsys):
    from muscle_pipeline import api
    from muscle_pipeline.errors import UsageError

    code = cli_main(["evaluate", "--pred", str(ts_reference["same"]), "--ref", str(ts_reference["ref"]),
                     "-o", str(tmp_path / "out"), "--reference-map", "totalsegmentator"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "unknown reference map 'totalsegmentator'" in err[0] and "totalsegmentator_total" in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="unknown reference map"):
        api.evaluate([(ts_reference["same"], ts_reference["ref"])], tmp_path / "out", reference_map="nope")
