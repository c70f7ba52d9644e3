"""The Visible Human lower-limb atlas (Andreassen et al. 2023, CC BY 4.0): ingestion with sides,
completion of missing bones/muscles, tissue classes and bilateral scenes (docs/atlas.md).

    from muscle_pipeline.atlas import complete_subject, to_ni35
    subj = complete_subject("VHF", spacing=2.0, cache_dir="cache/atlas")
"""
from .ingest import GENERATION_ONLY, Leg, check_sides, read_leg, to_ni35, to_ontology
from .scene import Completed, add_tissues, assemble_scene, complete_subject, training_entries

__all__ = ["complete_subject", "Completed", "Leg", "read_leg", "check_sides", "to_ontology", "to_ni35",
           "add_tissues", "assemble_scene", "training_entries", "GENERATION_ONLY"]
