"""``muscle-pipeline labels``: print the muscle ontology or a dataset's label map.

    muscle-pipeline labels                          # the ontology as JSON
    muscle-pipeline labels --format itksnap > labels.txt
    muscle-pipeline labels --list-datasets
    muscle-pipeline labels --dataset qmritools_calf  # {source value: ontology name}
    muscle-pipeline labels --dataset qmritools_calf --format slicer  # table of the values it maps to
    muscle-pipeline labels --dataset qmritools_calf --write out/     # labels.json, ITK-SNAP, Slicer files
"""
from __future__ import annotations

import json
import sys

FORMATS = ("json", "itksnap", "slicer")


def register(subparsers):
    parser = subparsers.add_parser(
        "labels",
        help="print the muscle ontology (JSON, ITK-SNAP or Slicer table) or a dataset's label map",
        description="Print the muscle ontology in a viewer's label-table format, or the map from a source "
                    "dataset's label values to ontology names.",
    )
    parser.add_argument("--format", choices=FORMATS, default="json",
                        help="output format (default json). With --dataset: json prints {source value: "
                             "ontology name}; itksnap/slicer print the table of the ontology labels it maps to")
    parser.add_argument("--dataset", metavar="NAME", help="a dataset map (see --list-datasets)")
    parser.add_argument("--list-datasets", action="store_true", help="list the dataset maps with their titles")
    parser.add_argument("--write", metavar="FOLDER",
                        help="write labels.json, labels_itksnap.txt and labels_slicer.ctbl into FOLDER instead "
                             "of printing (only the dataset's labels with --dataset)")
    return parser


def run(args) -> int:
    from muscle_pipeline import datasets, labels

    if args.list_datasets:
        for name in datasets.available_datasets():
            print(f"{name}\t{datasets.dataset_info(name)['title']}")
        return 0
    values = None
    if args.dataset:
        if args.dataset not in datasets.available_datasets():
            print(f"muscle-pipeline labels: unknown dataset {args.dataset!r}; available: "
                  f"{', '.join(datasets.available_datasets())}", file=sys.stderr)
            return 2
        values = sorted(set(datasets.dataset_ontology_values(args.dataset).values()))
    if args.write:
        for path in labels.write_label_tables(args.write, values).values():
            print(path)
        return 0
    if args.dataset and args.format == "json":
        mapping = datasets.dataset_map(args.dataset)
        sys.stdout.write(json.dumps({str(v): mapping[v] for v in sorted(mapping)}, indent=1) + "\n")
        return 0
    writer = {"json": labels.to_json, "itksnap": labels.to_itksnap, "slicer": labels.to_slicer}[args.format]
    sys.stdout.write(writer(values))
    return 0
