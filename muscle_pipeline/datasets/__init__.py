"""Maps from each source dataset's label values to muscle-ontology names.

Every labelled dataset keeps its own numbers; ``<name>.json`` beside this file says which
ontology name each source value means, where the data came from, its licence and how the mapping
was established (the evidence, for maps that were not simply copied from a class list)::

    dataset_map("qmritools_calf")            # {13: "gastrocnemius_medial_head_right", ...}
    map_labels(label_array, "qmritools_calf")  # source values -> ontology values (uint8)
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources

import jsonschema
import numpy as np

from muscle_pipeline import labels as ontology

logger = logging.getLogger(__name__)

# The header every map file must carry; "labels" maps a source value (as a JSON string key) to an
# ontology name.
MAP_SCHEMA = {
    "type": "object",
    "required": ["name", "title", "source", "licence", "method", "labels"],
    "properties": {
        "name": {"type": "string"},
        "title": {"type": "string"},
        "source": {
            "type": "object",
            "required": ["origin", "files"],
            "properties": {"origin": {"type": "string"}, "files": {"type": "array", "items": {"type": "string"}}},
        },
        "licence": {"type": "string"},
        "method": {"type": "string"},
        "notes": {"type": "array", "items": {"type": "string"}},
        "unmapped": {"type": "object", "additionalProperties": {"type": "string"}},
        "labels": {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {"^[0-9]+$": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}


def available_datasets() -> list[str]:
    """Names of the dataset maps shipped with the package, sorted."""
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    if name not in available_datasets():
        raise KeyError(f"no dataset map {name!r}; available: {', '.join(available_datasets())}")
    document = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
    jsonschema.validate(document, MAP_SCHEMA)
    for value, label_name in document["labels"].items():
        ontology.label(label_name)  # KeyError names the bad entry
    return document


def dataset_info(name: str) -> dict:
    """The whole map file: ``title``, ``source``, ``licence``, ``method``, ``notes``, ``labels``."""
    return json.loads(json.dumps(_load(name)))  # a copy, so callers cannot alter the cache


def dataset_map(name: str) -> dict[int, str]:
    """``{source value: ontology name}`` of dataset ``name``."""
    return {int(value): label_name for value, label_name in _load(name)["labels"].items()}


def dataset_ontology_values(name: str) -> dict[int, int]:
    """``{source value: ontology value}`` of dataset ``name``."""
    return {value: ontology.value_of(label_name) for value, label_name in dataset_map(name).items()}


def map_labels(array, name: str | Mapping[int, str | int], *, return_dropped: bool = False):
    """Convert a label map with dataset ``name``'s values into ontology values.

    ``name``: a dataset map name, or a dict ``{source value: ontology name or value}`` (a lab's own
    numbering).

    ``array``: numpy array or torch tensor / MetaTensor of integer labels, any shape (metadata is
    kept). Returns the same type with dtype uint8 (every ontology value fits). Source values the
    map does not know (organs, vertebrae, ...) become 0; they are logged at INFO level and, with
    ``return_dropped=True``, returned as a set: ``(mapped, dropped)``.
    """
    from monai.transforms import MapLabelValue
    from monai.utils import convert_data_type

    if isinstance(name, str):
        values = dataset_ontology_values(name)
    else:
        values = {int(k): v if isinstance(v, (int, np.integer)) else ontology.value_of(str(v)) for k, v in name.items()}
        name = "label map"
    array_np = convert_data_type(array, np.ndarray)[0]
    present = [int(v) for v in np.unique(array_np)]
    if array_np.size and not np.array_equal(array_np, np.round(array_np)):
        raise ValueError(f"{name}: label array holds non-integer values")
    dropped = {v for v in present if v != 0 and v not in values}
    if dropped:
        logger.info("%s: source label values without an ontology name set to 0: %s", name, sorted(dropped))
    # Every value present gets an explicit target, so nothing keeps its source number by accident.
    mapper = MapLabelValue(present, [values.get(v, 0) for v in present], dtype=np.uint8)
    mapped = mapper(array)
    return (mapped, dropped) if return_dropped else mapped


__all__ = ["available_datasets", "dataset_info", "dataset_map", "dataset_ontology_values", "map_labels",
           "MAP_SCHEMA"]
