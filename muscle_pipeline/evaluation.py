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
from muscle_pipeline.errors import CorruptFileError, InputError, NoCasesFoundError, UnsupportedImageError
from muscle_pipeline.io.discover import image_format, strip_image_suffix
from muscle_pipeline.metrics import METRIC_KEYS, segmentation_metrics

ROW_KEYS = ("case", "label", "name", *METRIC_KEYS)
SUMMARY_METRICS = ("dice", "asd_mm", "hd95_mm", "volume_error_pct")
# Largest difference (mm) between the affines of prediction and reference still called "same grid"
# (NIfTI stores the affine in float32: ~1e-5 mm at typical origins, far below this).
GRID_TOLERANCE_MM = 1e-3
# Name of the label map inside a pipeline case folder: <out>/<case_id>/segmentation.nii.gz
CASE_FOLDER_FILE = "segmentation"

Pairs = Sequence[tuple[str | Path, str | Path]] | Mapping[str, tuple[str | Path, str | Path]]


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
) -> list[dict]:
    """Rows (keys ``ROW_KEYS``) of one prediction/reference pair; see :func:`evaluate_pairs`."""
    pred, pred_affine = read_label_map(pred_path)
    ref, ref_affine = read_label_map(ref_path)
    _check_same_grid(pred_path, pred.shape, pred_affine, ref_path, ref.shape, ref_affine)
    spacing = tuple(float(s) for s in np.linalg.norm(ref_affine[:3, :3], axis=0))
    table = segmentation_metrics(pred, ref, labels, spacing, distances)
    case = case or case_id_of(pred_path)
    return [
        {"case": case, "label": value, "name": label_name(value, label_names), **values}
        for value, values in table.items()
    ]


def evaluate_pairs(
    pairs: Pairs,
    labels: Iterable[int] | None = None,
    out_dir: str | Path | None = None,
    label_names: Mapping[int, str] | None = None,
    distances: bool = True,
) -> list[dict]:
    """Score every (prediction, reference) pair; write the CSVs and box plot when ``out_dir``.

    ``pairs``: ``[(pred, ref), ...]`` (case id from the prediction's file name, see
    :func:`case_id_of`) or ``{case_id: (pred, ref)}``. ``labels``: the values to score; None
    scores every non-zero value found in either map of each case. ``distances=False`` skips
    ASD/HD95 (left nan). Returns the rows of ``metrics.csv``.
    """
    labels = None if labels is None else [int(v) for v in labels]
    rows: list[dict] = []
    for case, (pred, ref) in _as_case_pairs(pairs).items():
        case_rows = evaluate_case(pred, ref, labels, case, label_names, distances)
        for row in case_rows:
            row.setdefault("asd_mm", float("nan"))
            row.setdefault("hd95_mm", float("nan"))
        rows.extend(case_rows)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out / "metrics.csv", ROW_KEYS)
        write_csv(summarize(rows), out / "summary.csv")
        plot_dice(rows, out / "dice_boxplot.png")
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
