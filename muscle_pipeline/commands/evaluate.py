"""``muscle-pipeline evaluate``: score predicted label maps against references.

    muscle-pipeline evaluate --pred results/ --ref labels/ -o eval/
    muscle-pipeline evaluate --pred a.nii.gz --ref a_ref.nii.gz -o eval/ --labels 28 128
    muscle-pipeline evaluate --pred ts_pred/ --ref ts_ref/ -o eval/ --dataset totalsegmentator_total
    muscle-pipeline evaluate --pred out/ --ref ts_seg.nii.gz -o eval/ --reference-map totalsegmentator_total

Predictions and references are files or folders (searched recursively for NIfTI/NRRD/MHA);
they are paired by case id: the file name without its suffix, or for the pipeline's own output
``<case>/segmentation.nii.gz`` the folder name. A single file on each side pairs as is. Writes
metrics.csv, summary.csv and dice_boxplot.png into the output folder (see
:mod:`muscle_pipeline.evaluation`) and prints the mean Dice per label.

``--reference-map DATASET``: the predictions hold ontology values (the pipeline's output) but the
references keep a source dataset's numbers (e.g. TotalSegmentator's map); the references are
mapped to the ontology before scoring. Structures the reference does not label are not scored
(listed in not_scored.csv and printed); structures it labels and the prediction lacks score 0.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, ASD, HD95 and volume error of predictions vs references (CSV tables + box plot)",
        description=__doc__.split("\n\n")[2],
    )
    parser.add_argument("--pred", nargs="+", required=True, metavar="PATH", help="predicted label maps (files/folders)")
    parser.add_argument("--ref", nargs="+", required=True, metavar="PATH", help="reference label maps (files/folders)")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="where the tables and plot go")
    parser.add_argument("--labels", nargs="+", type=int, metavar="VALUE",
                        help="label values to score (default: every value found in either map)")
    parser.add_argument("--dataset", metavar="NAME",
                        help="name the values by this dataset's map (muscle-pipeline labels --list-datasets) "
                             "instead of the ontology, for maps that keep a source dataset's numbers")
    parser.add_argument("--reference-map", metavar="DATASET",
                        help="the references hold this dataset's values (muscle-pipeline labels --list-datasets), "
                             "the predictions ontology values: map the references to the ontology first and "
                             "score only the structures they label")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="score the cases that pair and skip files without a partner (default: error)")
    parser.add_argument("--no-distances", action="store_true", help="skip ASD and HD95 (faster)")
    return parser


def run(args) -> int:
    from muscle_pipeline.evaluation import collect_label_files, evaluate_pairs, pair_cases, summary_lines

    label_names = None
    reference_map = getattr(args, "reference_map", None)
    if reference_map and args.dataset:
        print("muscle-pipeline evaluate: --dataset (both maps keep the dataset's values) and --reference-map "
              "(only the references do) exclude each other", file=sys.stderr)
        return 2
    if reference_map:
        from muscle_pipeline.evaluation import resolve_reference_map

        resolve_reference_map(reference_map)  # an unknown name: one error line (UsageError), before any file
    if args.dataset:
        from muscle_pipeline import datasets

        if args.dataset not in datasets.available_datasets():
            print(f"muscle-pipeline evaluate: unknown dataset {args.dataset!r}; available: "
                  f"{', '.join(datasets.available_datasets())}", file=sys.stderr)
            return 2
        label_names = datasets.dataset_map(args.dataset)
    pairs = pair_cases(collect_label_files(args.pred), collect_label_files(args.ref), args.allow_unmatched)
    rows = evaluate_pairs(pairs, args.labels, args.output, label_names, distances=not args.no_distances,
                          reference_map=reference_map)
    extra = ", not_scored.csv" if rows.not_scored else ""
    print(f"{len(pairs)} case(s), {len(rows)} case x label rows -> {args.output}/metrics.csv, summary.csv, "
          f"dice_boxplot.png{extra}")
    if reference_map:
        print(f"  references mapped from {reference_map} to the ontology")
    print("\n".join(summary_lines(rows)))
    return 0
