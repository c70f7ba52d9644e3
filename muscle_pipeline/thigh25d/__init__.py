"""Seed 004: 2.5D thigh CT segmentation (three simplified 2D U-Nets, winner-takes-all voting).

    from muscle_pipeline.thigh25d import load_model
    model = load_model("thigh_ct_25d")
    labels = model.predict(right_looking_leg)   # (X, Y, Z) uint8 right-side ontology values
"""
from muscle_pipeline.thigh25d.model import SliceEnsembleModel, ThighCTModel, VolumeModel, load_model
from muscle_pipeline.thigh25d.network import baseline_unet3d, simple_unet2d
from muscle_pipeline.thigh25d.preprocess import ThighCTPreprocess, to_input_grid
from muscle_pipeline.thigh25d.slices import VIEWS, NeighbourSlices, NeighbourSlicesd, view_logits
from muscle_pipeline.thigh25d.voting import winner_takes_all

__all__ = ["load_model", "ThighCTModel", "SliceEnsembleModel", "VolumeModel", "simple_unet2d", "baseline_unet3d",
           "ThighCTPreprocess", "to_input_grid", "VIEWS", "NeighbourSlices", "NeighbourSlicesd", "view_logits",
           "winner_takes_all"]
