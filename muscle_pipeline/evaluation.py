"""Evaluate predicted label maps against references: CSV tables and box plots.

    rows = evaluate_pairs([(pred_path, ref_path), ...], labels=None, out_dir="eval")
    rows = compare_methods({"2.5D": pairs_a, "2D": pairs_b, "3D": pairs_c}, out_dir="cmp")

Tables are plain ``list[dict]`` (no pandas). ``evaluate_pairs`` writes, in ``out_dir``:

* ``metrics.csv`` — one row per case × label value: ``case, label, name, dice, asd_mm, hd95_mm,
  volume_ref_ml, volume_pred_ml, volume_error_pct`` (empty-mask conventions:
  :mod:`muscle_pipeline.metrics`; ``nan``/``inf`` written as such).
* ``summary.csv`` — one row per label, then ``all``: ``n`` cases, mean and sample SD of every
  metric (nan values left out; a mean containing ``inf`` stays ``inf``), ``n_missed`` (reference
  present, prediction empty) and ``n_spurious`` (prediction present, reference empty).
* ``dice_boxplot.png`` — Dice per label, one box each, the cases drawn as dots.

``compare_methods`` scores several methods on the same cases and writes
``comparison_metrics.csv`` (the rows above plus ``method``), ``comparison_summary.csv``,
``paired_tests.csv`` (per pair of methods and label, then over per-case means: cases paired
by id, mean Dice difference, Wilcoxon signed-rank p) and ``dice_comparison.png`` (boxes per label and method, the same case
joined by a line across methods).

Prediction and reference must share the voxel grid (shape and affine); otherwise
:class:`~muscle_pipeline.errors.InputError` names both files. Label names come from the ontology
(:mod:`muscle_pipeline.labels`) unless ``label_names`` is given (e.g. a source dataset's own
values: ``muscle_pipeline.datasets.dataset_map("totalsegmentator_total")``).

**A reference in a dataset's own numbers** (``reference_map="totalsegmentator_total"``, or a dict
``{source value: ontology name}``): the reference is mapped to ontology values first (values the
map does not name, e.g. organs, become background), and the prediction is read as ontology values.
Only the structures that the map can label are scored: a predicted structure the reference does
not label (a thigh muscle against TotalSegmentator) is listed in ``not_scored.csv`` and on the
returned rows' ``not_scored``, not scored as a false positive; a structure the reference has and
the prediction lacks scores Dice 0. A predicted part of a structure the reference labels only as
a whole (iliacus and psoas major against TotalSegmentator's iliopsoas) is scored as that whole.

``evaluate_datalist(model, entries, out_dir)`` runs a model through the segment job on a list of
``{"image", "label", "label_map", ...}`` entries (what a bundle's ``configs/evaluate.json``
declares) and scores each the same way, only on the structures the model segments.
"""
from __future__ import annotations

import csv
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from muscle_pipeline import labels as ontology
from muscle_pipeline.errors import CorruptFileError, InputError, NoCasesFoundError, UnsupportedImageError, UsageError
from muscle_pipeline.io.discover import image_format, strip_image_suffix
from muscle_pipeline.metrics import METRIC_KEYS, segmentation_metrics

ROW_KEYS = ("case", "label", "name", *METRIC_KEYS)
NOT_SCORED_KEYS = ("case", "label", "name", "volume_pred_ml", "volume_ref_ml", "reason")
SUMMARY_METRICS = ("dice", "asd_mm", "hd95_mm", "volume_error_pct")
# Largest difference (mm) between the affines of prediction and reference still called "same grid"
# (NIfTI stores the affine in float32: ~1e-5 mm at typical origins, far below this).
GRID_TOLERANCE_MM = 1e-3
# Name of the label map inside a pipeline case folder: <out>/<case_id>/segmentation.nii.gz
CASE_FOLDER_FILE = "segmentation"

Pairs = Sequence[tuple[str | Path, str | Path]] | Mapping[str, tuple[str | Path, str | Path]]
ReferenceMap = str | Mapping[int, str] | None


class EvaluationRows(list):
    """The rows of ``metrics.csv`` (a plain list of dicts) plus ``not_scored``: one dict per case
    and structure left out or merged, with the reason (keys ``NOT_SCORED_KEYS``)."""

    def __init__(self, rows: Iterable[dict] = (), not_scored: Iterable[dict] = ()):
        super().__init__(rows)
        self.not_scored: list[dict] = list(not_scored)


# ---------------------------------------------------------------------------------------------
# Reading label maps
def read_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(integer array (X, Y, Z), affine voxel index -> RAS+ mm) of a NIfTI/NRRD/MHA label map."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label map not found")
    fmt = image_format(path)
    try:
        if fmt == "nifti":
            image = nib.load(str(path))
            array, affine = np.asanyarray(image.dataobj), image.affine
        elif fmt in ("nrrd", "mha"):
            array, affine = _read_with_simpleitk(path)
        else:
            raise UnsupportedImageError(path, "not a NIfTI, NRRD or MetaImage label map")
    except InputError:
        raise
    except Exception as exc:  # nibabel / SimpleITK raise many types for broken files
        raise CorruptFileError(path, f"cannot read the label map: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    while array.ndim > 3 and array.shape[-1] == 1:  # NIfTI label maps are often (X, Y, Z, 1)
        array = array[..., 0]
    if array.ndim != 3:
        raise UnsupportedImageError(path, f"a label map must be 3D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise UnsupportedImageError(path, "not a label map: voxel values are not integers")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise UnsupportedImageError(path, "not a label map: negative voxel values")
    return array, np.asarray(affine, dtype=np.float64)


def _read_with_simpleitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).transpose()  # SimpleITK (z, y, x) -> (x, y, z)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # ITK's LPS+ world -> RAS+


def _check_same_grid(pred_path, pred_shape, pred_affine, ref_path, ref_shape, ref_affine) -> None:
    if pred_shape != ref_shape:
        raise InputError(pred_path, f"prediction shape {pred_shape} differs from reference {ref_path} shape {ref_shape}")
    difference = float(np.max(np.abs(pred_affine - ref_affine)))
    if difference > GRID_TOLERANCE_MM:
        raise InputError(
            pred_path,
            f"prediction and reference {ref_path} are not on the same grid (affines differ by up to "
            f"{difference:.4g} mm); resample the prediction onto the reference first",
        )


# ---------------------------------------------------------------------------------------------
# Cases and pairing
def case_id_of(path: str | Path) -> str:
    """'ct01.nii.gz' -> 'ct01'; '<case>/segmentation.nii.gz' (a pipeline output) -> '<case>'."""
    path = Path(path)
    stem = strip_image_suffix(path.name)
    return path.parent.name if stem == CASE_FOLDER_FILE and path.parent.name else stem


def collect_label_files(paths: str | Path | Iterable[str | Path]) -> dict[str, Path]:
    """``{case_id: file}`` of the label maps in files and folders (folders searched recursively)."""
    inputs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    found: dict[str, Path] = {}
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and image_format(p) is not None)
            files = [p for p in files if not p.name.lower().endswith((".raw", ".zraw"))]
        elif item.is_file():
            files = [item]
        else:
            raise InputError(item, "no such file or folder")
        for file in files:
            case = case_id_of(file)
            if case in found and found[case] != file:
                raise InputError(file, f"case id {case!r} also belongs to {found[case]}; rename one of them")
            found[case] = file
    if not found:
        raise NoCasesFoundError(inputs[0] if len(inputs) == 1 else None, "no label map (NIfTI/NRRD/MHA) found")
    return found


def pair_cases(
    predictions: Mapping[str, Path], references: Mapping[str, Path], allow_unmatched: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Pair prediction and reference files by case id (a single file on each side pairs as is).

    Unmatched files raise :class:`InputError` listing them, unless ``allow_unmatched``.
    """
    if len(predictions) == 1 and len(references) == 1:
        (case, pred), (_, ref) = next(iter(predictions.items())), next(iter(references.items()))
        return {case: (pred, ref)}
    pairs = {case: (predictions[case], references[case]) for case in sorted(predictions) if case in references}
    missing_ref = sorted(set(predictions) - set(references))
    missing_pred = sorted(set(references) - set(predictions))
    if not pairs or ((missing_ref or missing_pred) and not allow_unmatched):
        parts = []
        if missing_ref:
            parts.append(f"predictions without reference: {', '.join(str(predictions[c]) for c in missing_ref[:5])}")
        if missing_pred:
            parts.append(f"references without prediction: {', '.join(str(references[c]) for c in missing_pred[:5])}")
        raise InputError(None, "cannot pair predictions with references by case id; " + "; ".join(parts))
    return pairs


def _as_case_pairs(pairs: Pairs) -> dict[str, tuple[Path, Path]]:
    if isinstance(pairs, Mapping):
        return {str(case): (Path(p), Path(r)) for case, (p, r) in pairs.items()}
    out: dict[str, tuple[Path, Path]] = {}
    for pred, ref in pairs:
        case = case_id_of(pred)
        if case in out:
            raise InputError(pred, f"two predictions have the case id {case!r}; pass a dict {{case_id: (pred, ref)}}")
        out[case] = (Path(pred), Path(ref))
    return out


# ---------------------------------------------------------------------------------------------
# References in a source dataset's own numbers
def resolve_reference_map(reference_map: ReferenceMap) -> tuple[str, dict[int, int]]:
    """``(name, {source value: ontology value})`` of a dataset map name or a dict
    ``{source value: ontology name}``. An unknown dataset name or ontology name raises
    :class:`~muscle_pipeline.errors.UsageError` listing what exists."""
    from muscle_pipeline import datasets

    if isinstance(reference_map, str):
        if reference_map not in datasets.available_datasets():
            raise UsageError(f"unknown reference map {reference_map!r}: not a dataset map of muscle_pipeline "
                             f"(available: {', '.join(datasets.available_datasets())}; see muscle-pipeline labels "
                             "--list-datasets)")
        return reference_map, datasets.dataset_ontology_values(reference_map)
    if isinstance(reference_map, Mapping):
        values = {}
        for source, name in reference_map.items():
            try:
                values[int(source)] = ontology.value_of(str(name))
            except KeyError:
                raise UsageError(f"reference map: {name!r} (for value {source}) is not an ontology name "
                                 "(see muscle-pipeline labels)") from None
        return "custom map", values
    raise UsageError(f"reference map must be a dataset map name or a dict {{value: ontology name}}, "
                     f"got {type(reference_map).__name__}")


def map_reference(array: np.ndarray, values: Mapping[int, int]) -> tuple[np.ndarray, set[int]]:
    """Source values -> ontology values (uint8); returns ``(mapped, dropped)``: the non-zero source
    values the map does not name (they become 0). :func:`muscle_pipeline.datasets.map_labels`."""
    from muscle_pipeline.datasets import map_labels

    return map_labels(array, values, return_dropped=True)


def covering_value(value: int, labelled: set[int]) -> int | None:
    """The value in ``labelled`` of the nearest coarser structure that contains ``value``'s
    structure, same side (iliacus_right -> iliopsoas_right when only iliopsoas is labelled); None
    if there is none or ``value`` is not an ontology value."""
    try:
        start = ontology.label(int(value))
    except KeyError:
        return None
    frontier, seen = [start.structure.name], {start.structure.name}
    while frontier:
        wider = []
        for part in frontier:
            for whole in ontology.STRUCTURES:
                if whole.name in seen or part not in ontology.parts_of(whole.name):
                    continue
                seen.add(whole.name)
                wider.append(whole.name)
                name = f"{whole.name}_{start.side}" if whole.sided and start.side else whole.name
                try:
                    candidate = ontology.value_of(name)
                except KeyError:
                    continue
                if candidate in labelled:
                    return candidate
        frontier = wider
    return None


def _merge_parts(pred: np.ndarray, labelled: set[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Prediction with the parts of labelled wholes relabelled to the whole; ``{part: whole}``."""
    merged: dict[int, int] = {}
    for value in np.unique(pred):
        value = int(value)
        if value and value not in labelled:
            whole = covering_value(value, labelled)
            if whole is not None:
                merged[value] = whole
    if merged:
        pred = pred.copy()
        for part, whole in merged.items():
            pred[pred == part] = whole
    return pred, merged


# ---------------------------------------------------------------------------------------------
# Scoring
def label_name(value: int, label_names: Mapping[int, str] | None = None) -> str:
    """Name of a label value: from ``label_names`` if given, else the ontology ('' if unknown)."""
    if label_names is not None:
        return str(label_names.get(int(value), ""))
    try:
        return ontology.name_of(int(value))
    except KeyError:
        return ""


def evaluate_case(
    pred_path: str | Path,
    ref_path: str | Path,
    labels: Iterable[int] | None = None,
    case: str | None = None,
    label_names: Mapping[int, str] | None = None,
    distances: bool = True,
    reference_map: ReferenceMap = None,
    scope: Iterable[int] | None = None,
    scope_reason: str = "not segmented by the model",
) -> EvaluationRows:
    """Rows (keys ``ROW_KEYS``) of one prediction/reference pair; see :func:`evaluate_pairs`.

    ``reference_map``: the reference holds a source dataset's values (see the module docstring).
    ``scope``: ontology values the prediction can hold (e.g. a model's structures); reference
    structures outside it are not scored (``scope_reason`` says why in ``not_scored``).
    """
    pred, pred_affine = read_label_map(pred_path)
    ref, ref_affine = read_label_map(ref_path)
    _check_same_grid(pred_path, pred.shape, pred_affine, ref_path, ref.shape, ref_affine)
    spacing = tuple(float(s) for s in np.linalg.norm(ref_affine[:3, :3], axis=0))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    case = case or case_id_of(pred_path)
    not_scored: list[dict] = []

    def leave_out(value: int, reason: str) -> None:
        not_scored.append({"case": case, "label": int(value), "name": label_name(value, label_names),
                           "volume_pred_ml": float(np.count_nonzero(pred == value)) * voxel_ml,
                           "volume_ref_ml": float(np.count_nonzero(ref == value)) * voxel_ml, "reason": reason})

    requested = None if labels is None else [int(v) for v in labels]
    if reference_map is not None:
        if label_names is not None:
            raise UsageError("label_names and reference_map exclude each other: with a reference map the values "
                             "are the ontology's")
        map_name, values = resolve_reference_map(reference_map)
        ref, _ = map_reference(ref, values)
        labelled = set(values.values()) - {0}
        if scope is not None:  # a model's part of a labelled whole stands for the whole
            scope = {v if v in labelled else (covering_value(v, labelled) or v) for v in scope}
        pred, merged = _merge_parts(pred, labelled)
        for part, whole in sorted(merged.items()):
            not_scored.append({"case": case, "label": part, "name": label_name(part),
                               "volume_pred_ml": float("nan"), "volume_ref_ml": float("nan"),
                               "reason": f"scored as part of {label_name(whole)} ({whole}): the reference map "
                                         f"{map_name} labels only the whole"})
        if requested is not None:
            requested = list(dict.fromkeys(v if v in labelled else (covering_value(v, labelled) or v)
                                           for v in requested))
        present = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
        candidates = present if requested is None else requested
        for value in candidates:
            if value not in labelled:
                leave_out(value, f"the reference map {map_name} does not label this structure")
        requested = [v for v in candidates if v in labelled]
    if scope is not None:
        scope = {int(v) for v in scope}
        present = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
        candidates = present if requested is None else requested
        for value in candidates:
            if value not in scope:
                leave_out(value, scope_reason)
        requested = [v for v in candidates if v in scope]
    table = segmentation_metrics(pred, ref, requested, spacing, distances) if requested != [] else {}
    return EvaluationRows(
        ({"case": case, "label": value, "name": label_name(value, label_names), **values}
         for value, values in table.items()),
        not_scored,
    )


def evaluate_pairs(
    pairs: Pairs,
    labels: Iterable[int] | None = None,
    out_dir: str | Path | None = None,
    label_names: Mapping[int, str] | None = None,
    distances: bool = True,
    reference_map: ReferenceMap = None,
) -> EvaluationRows:
    """Score every (prediction, reference) pair; write the CSVs and box plot when ``out_dir``.

    ``pairs``: ``[(pred, ref), ...]`` (case id from the prediction's file name, see
    :func:`case_id_of`) or ``{case_id: (pred, ref)}``. ``labels``: the values to score; None
    scores every non-zero value found in either map of each case. ``distances=False`` skips
    ASD/HD95 (left nan). ``reference_map``: a dataset map name (``muscle-pipeline labels
    --list-datasets``) or ``{source value: ontology name}`` when the references keep a source
    dataset's numbers (see the module docstring); structures it does not label are not scored and
    listed in ``not_scored.csv``. Returns the rows of ``metrics.csv`` (``.not_scored``: the rest).
    """
    labels = None if labels is None else [int(v) for v in labels]
    if reference_map is not None:
        resolve_reference_map(reference_map)  # an unknown name fails before any file is read
    rows = EvaluationRows()
    for case, (pred, ref) in _as_case_pairs(pairs).items():
        case_rows = evaluate_case(pred, ref, labels, case, label_names, distances, reference_map)
        _add_rows(rows, case_rows)
    if out_dir is not None:
        write_tables(rows, out_dir)
    return rows


def _add_rows(rows: EvaluationRows, case_rows: EvaluationRows) -> None:
    for row in case_rows:
        row.setdefault("asd_mm", float("nan"))
        row.setdefault("hd95_mm", float("nan"))
    rows.extend(case_rows)
    rows.not_scored.extend(case_rows.not_scored)


def write_tables(rows: EvaluationRows | Sequence[dict], out_dir: str | Path) -> Path:
    """``metrics.csv``, ``summary.csv``, ``dice_boxplot.png`` and, when anything was left out,
    ``not_scored.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "metrics.csv", ROW_KEYS)
    write_csv(summarize(rows), out / "summary.csv")
    plot_dice(rows, out / "dice_boxplot.png")
    not_scored = getattr(rows, "not_scored", [])
    stale = out / "not_scored.csv"
    if not_scored:
        write_csv(not_scored, stale, NOT_SCORED_KEYS)
    elif stale.exists():
        stale.unlink()
    return out


# ---------------------------------------------------------------------------------------------
# A model on a declared evaluation list (bundles' configs/evaluate.json)
def evaluate_datalist(
    model,
    dataset: Sequence[Mapping],
    output_dir: str | Path,
    distances: bool = True,
) -> EvaluationRows:
    """Segment each entry's image with ``model`` through the segment job and score it.

    ``dataset``: entries ``{"image", "label", "label_map", ...}`` as in a bundle's train.json:
    ``label_map`` a dataset map name, a dict ``{value: ontology name}`` or None (the label file
    holds ontology values); optional ``case`` (the row id; default the image's file name),
    ``sides`` (``"both"`` default, ``"right"`` or ``"left"``: score only that side's structures)
    and ``simulate_other_leg`` (``{"seed", "full_width", "first_index"}``: the entry's labelled
    half-scan leg is replaced by a simulated contralateral leg, see
    :mod:`muscle_pipeline.synthetic.other_leg`, written under ``output_dir/cases``).
    Only the model's structures are scored. Writes ``predictions/<case>.nii.gz``, the tables of
    :func:`write_tables` and ``datalist.json`` (the entries as scored) into ``output_dir``.
    """
    import json

    from muscle_pipeline.io import read_image
    from muscle_pipeline.segmentation import segment_image

    out = Path(output_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    values = ontology.structure_values(model.structures)
    rows, scored_entries, seen = EvaluationRows(), [], set()
    for index, entry in enumerate(dataset):
        entry = dict(entry)
        for key in ("image", "label"):
            if not entry.get(key):
                raise UsageError(f"evaluation entry {index}: no {key!r} (entries are {{'image', 'label', 'label_map'}})")
        case = str(entry.get("case") or strip_image_suffix(Path(entry["image"]).name))
        if case in seen:
            case = f"{case}_{index}"
        seen.add(case)
        if entry.get("label_map") is not None:
            resolve_reference_map(entry["label_map"])
        if entry.get("simulate_other_leg"):
            entry = _simulated_other_leg(entry, out / "cases", case)
        sides = entry.get("sides") or "both"
        if sides not in ("both", "right", "left"):
            raise UsageError(f"evaluation entry {index}: sides must be 'both', 'right' or 'left', got {sides!r}")
        scope = [v for v in values if sides == "both" or ontology.label(v).side in (sides, None)]
        image = read_image(entry["image"])
        labels = segment_image(image, model).labels
        pred_path = out / "predictions" / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(labels).astype(np.uint8), np.asarray(image.affine, dtype=np.float64)),
                 str(pred_path))
        reason = "not segmented by the model" if sides == "both" else \
            f"not segmented by the model, or on the side not evaluated (sides={sides!r})"
        _add_rows(rows, evaluate_case(pred_path, entry["label"], None, case, None, distances,
                                      entry.get("label_map"), scope, reason))
        scored_entries.append({"case": case, **{k: v for k, v in entry.items() if k != "case"}})
    write_tables(rows, out)
    (out / "datalist.json").write_text(json.dumps(scored_entries, indent=1, default=str))
    return rows


def _simulated_other_leg(entry: dict, folder: Path, case: str) -> dict:
    """Write the simulated contralateral leg of ``entry`` (image + ontology labels) into ``folder``."""
    from muscle_pipeline.synthetic.other_leg import as_opposite_half, simulate_other_leg

    spec = dict(entry["simulate_other_leg"])
    source = nib.load(str(entry["image"]))
    image = np.asarray(source.dataobj, dtype=np.float32)
    labels, _ = read_label_map(entry["label"])
    if entry.get("label_map") is not None:
        labels, _ = map_reference(labels, resolve_reference_map(entry["label_map"])[1])
    leg_image, leg_labels = simulate_other_leg(image, labels.astype(np.uint8), int(spec.get("seed", 0)))
    if spec.get("full_width") is not None:  # flipped into the other half of the scan, LEFT values
        leg_image, leg_labels, affine = as_opposite_half(leg_image, leg_labels, source.affine,
                                                         int(spec["full_width"]), int(spec.get("first_index", 0)))
    else:
        affine = source.affine
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / f"{case}_image.nii.gz", folder / f"{case}_label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(leg_image, dtype=np.float32), affine), str(image_path))
    nib.save(nib.Nifti1Image(np.asarray(leg_labels, dtype=np.uint8), affine), str(label_path))
    return {**entry, "image": str(image_path), "label": str(label_path), "label_map": None,
            "simulated_from": {"image": str(entry["image"]), "label": str(entry["label"]), **spec}}


def summary_lines(rows: Sequence[dict]) -> list[str]:
    """What ``muscle-pipeline evaluate`` prints: mean Dice per label and over all, then one line per
    reason something was not scored (or merged), naming the structures."""
    lines = []
    for row in summarize(rows):
        sd = "" if math.isnan(row["dice_sd"]) else f" ± {row['dice_sd']:.3f}"
        name = f" {row['name']}" if row["name"] else ""
        lines.append(f"  {row['label']}{name}: Dice {row['dice_mean']:.3f}{sd} (n={row['n']})")
    by_reason: dict[str, dict[str, int]] = {}
    for item in getattr(rows, "not_scored", []):
        names = by_reason.setdefault(item["reason"], {})
        key = item["name"] or str(item["label"])
        names[key] = names.get(key, 0) + 1
    for reason, names in by_reason.items():
        listed = ", ".join(name + (f" ({n} cases)" if n > 1 else "") for name, n in names.items())
        verb = "merged" if reason.startswith("scored as part of") else "not scored"
        lines.append(f"  {verb} ({reason}): {listed}")
    return lines


def print_summary(rows: Sequence[dict], output_dir: str | Path | None = None) -> Sequence[dict]:
    """Print :func:`summary_lines` (and where the tables are); returns ``rows``."""
    head = f"{len({r['case'] for r in rows})} case(s), {len(rows)} case x label rows"
    print(head + (f" -> {output_dir}" if output_dir is not None else ""))
    print("\n".join(summary_lines(rows)))
    return rows


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    kept = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if kept.size == 0:
        return float("nan"), float("nan")
    if np.isinf(kept).any():
        return float(kept.mean()), float("nan")  # +inf (or -inf): a missed structure dominates
    return float(kept.mean()), float(kept.std(ddof=1)) if kept.size > 1 else float("nan")


def summarize(rows: Sequence[dict], group_keys: Sequence[str] = ("label",)) -> list[dict]:
    """Mean and SD of the metrics per group: rows grouped by ``group_keys`` (default: per label),
    groups in order of first appearance, labels by value; when the last key is ``label`` each
    group of the other keys ends with an ``all`` row over all of its rows."""
    *outer_keys, last = group_keys
    out = []
    for prefix, members in _by_prefix(rows, outer_keys).items():
        head = dict(zip(outer_keys, prefix))
        by_last: dict = defaultdict(list)
        for row in members:
            by_last[row[last]].append(row)
        for key in sorted(by_last, key=lambda v: (0, v, "") if isinstance(v, (int, np.integer)) else (1, 0, str(v))):
            out.append(_summary_row({**head, last: key}, by_last[key]))
        if last == "label":
            out.append(_summary_row({**head, "label": "all"}, members))
    return out


def _by_prefix(rows: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return dict(groups)


def _summary_row(head: dict, members: list[dict]) -> dict:
    names = {m.get("name", "") for m in members}
    row = {**head, "name": names.pop() if len(names) == 1 else "", "n": len(members)}
    for metric in SUMMARY_METRICS:
        row[f"{metric}_mean"], row[f"{metric}_sd"] = _mean_sd([m[metric] for m in members])
    row["n_missed"] = sum(m["volume_ref_ml"] > 0 and m["volume_pred_ml"] == 0 for m in members)
    row["n_spurious"] = sum(m["volume_ref_ml"] == 0 and m["volume_pred_ml"] > 0 for m in members)
    return row


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (floats in full precision; nan/inf as 'nan'/'inf')."""
    path = Path(path)
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    return path


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_csv`, numbers converted back (ints, floats, nan/inf)."""

    def convert(text: str):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as handle:
        return [{k: convert(v) for k, v in row.items()} for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _tick(value: int, name: str) -> str:
    return f"{name} ({value})" if name else str(value)


def plot_dice(rows: Sequence[dict], path: str | Path, title: str = "Dice per label") -> Path:
    """Box plot of Dice per label value (cases as dots); nan Dice (label in neither map) left out."""
    by_label: dict[int, list[float]] = defaultdict(list)
    names: dict[int, str] = {}
    for row in rows:
        names[row["label"]] = row["name"]
        if not math.isnan(row["dice"]):
            by_label[row["label"]].append(row["dice"])
    values = sorted(by_label)
    figure = _figure(max(6.0, 0.32 * len(values) + 2), 4.8)
    axes = figure.add_subplot(1, 1, 1)
    if values:
        axes.boxplot([by_label[v] for v in values], positions=range(len(values)), widths=0.6, showfliers=False)
        rng = np.random.default_rng(0)  # fixed jitter: the same table draws the same picture
        for i, v in enumerate(values):
            jitter = rng.uniform(-0.15, 0.15, len(by_label[v]))
            axes.scatter(i + jitter, by_label[v], s=10, color="C0", alpha=0.7, zorder=3)
        axes.set_xticks(range(len(values)))
        axes.set_xticklabels([_tick(v, names[v]) for v in values], rotation=70, ha="right", fontsize=7)
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("Dice")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(str(path))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Comparing methods on the same cases
def compare_methods(
    methods: Mapping[str, Pairs],
    labels: Iterable[int] | None = None,
    out_dir: str | Path | None = None,
    label_names: Mapping[int, str] | None = None,
    distances: bool = True,
) -> list[dict]:
    """Score each method's pairs (as :func:`evaluate_pairs`) and compare them case by case.

    Returns the rows of every method with a ``method`` column. With ``out_dir`` also writes
    ``comparison_metrics.csv``, ``comparison_summary.csv``, ``paired_tests.csv`` and
    ``dice_comparison.png`` (see the module docstring).
    """
    if not methods:
        raise ValueError("compare_methods needs at least one method")
    labels = None if labels is None else [int(v) for v in labels]
    rows: list[dict] = []
    for method, pairs in methods.items():
        rows.extend({"method": method, **row} for row in evaluate_pairs(pairs, labels, None, label_names, distances))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out / "comparison_metrics.csv", ("method", *ROW_KEYS))
        write_csv(summarize(rows, ("method", "label")), out / "comparison_summary.csv")
        write_csv(paired_tests(rows), out / "paired_tests.csv")
        plot_comparison(rows, out / "dice_comparison.png")
    return rows


def paired_tests(rows: Sequence[dict], metric: str = "dice") -> list[dict]:
    """For each pair of methods: per label, the cases both scored (finite ``metric``), the means,
    the mean difference (a − b) and the two-sided Wilcoxon signed-rank p-value (nan with fewer
    than 2 pairs or when every difference is 0). The ``all`` row pairs per-case means over the
    labels both methods scored, so each case counts once (labels of one case are not independent)."""
    from scipy.stats import wilcoxon

    score: dict[str, dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        if math.isfinite(row[metric]):
            score[row["method"]][(row["case"], row["label"])] = row[metric]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    label_values = sorted({row["label"] for row in rows})
    out = []
    for a, b in itertools.combinations(methods, 2):
        shared = sorted(set(score[a]) & set(score[b]), key=str)
        groups = {label: [(score[a][k], score[b][k]) for k in shared if k[1] == label] for label in label_values}
        per_case: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for key in shared:
            per_case[key[0]].append((score[a][key], score[b][key]))
        groups["all"] = [tuple(np.mean(pairs, axis=0)) for pairs in per_case.values()]
        for label, pairs in groups.items():
            values = np.asarray(pairs, dtype=float).reshape(-1, 2)
            diffs = values[:, 0] - values[:, 1]
            p_value = float("nan")
            if diffs.size >= 2 and np.any(diffs != 0):
                p_value = float(wilcoxon(diffs).pvalue)
            nan = float("nan")
            out.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "label": label,
                    "n_pairs": int(diffs.size),
                    f"{metric}_mean_a": float(values[:, 0].mean()) if diffs.size else nan,
                    f"{metric}_mean_b": float(values[:, 1].mean()) if diffs.size else nan,
                    "mean_difference": float(diffs.mean()) if diffs.size else nan,
                    "wilcoxon_p": p_value,
                }
            )
    return out


def plot_comparison(rows: Sequence[dict], path: str | Path, metric: str = "dice") -> Path:
    """Grouped box plot: per label, one box per method; thin grey lines join each case's values
    across methods (paired view)."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    label_values = sorted({row["label"] for row in rows})
    names = {row["label"]: row["name"] for row in rows}
    value = {(row["method"], row["case"], row["label"]): row[metric] for row in rows if math.isfinite(row[metric])}
    cases = sorted({row["case"] for row in rows})
    n = len(methods)
    width = 0.8 / max(n, 1)
    figure = _figure(max(6.0, len(label_values) * (0.35 * n + 0.3) + 2), 5.0)
    axes = figure.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(n)]
    for li, label in enumerate(label_values):
        offsets = [li + (mi - (n - 1) / 2) * width for mi in range(n)]
        for case in cases:
            xs = [x for x, m in zip(offsets, methods) if (m, case, label) in value]
            ys = [value[(m, case, label)] for m in methods if (m, case, label) in value]
            if len(xs) > 1:
                axes.plot(xs, ys, color="0.6", linewidth=0.6, alpha=0.7, zorder=1)
        for mi, method in enumerate(methods):
            data = [value[(method, c, label)] for c in cases if (method, c, label) in value]
            if data:
                box = axes.boxplot([data], positions=[offsets[mi]], widths=width * 0.85, showfliers=False,
                                   patch_artist=True)
                for patch in box["boxes"]:
                    patch.set_facecolor(colours[mi])
                    patch.set_alpha(0.6)
    axes.set_xticks(range(len(label_values)))
    axes.set_xticklabels([_tick(v, names[v]) for v in label_values], rotation=70, ha="right", fontsize=7)
    axes.set_xlim(-0.6, len(label_values) - 0.4)
    if metric == "dice":
        axes.set_ylim(-0.02, 1.02)
    shown = "Dice" if metric == "dice" else metric
    axes.set_ylabel(shown)
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(facecolor=c, alpha=0.6, label=m) for c, m in zip(colours, methods)], fontsize=8)
    axes.set_title(f"{shown} per label and method (lines join the same case)")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(str(path))
    return Path(path)
