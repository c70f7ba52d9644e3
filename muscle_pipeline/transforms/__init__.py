"""MONAI transforms of muscle_pipeline (array class + dictionary twin each)."""
from muscle_pipeline.transforms.bias import N4BiasFieldCorrection, N4BiasFieldCorrectiond
from muscle_pipeline.transforms.femur import FemurAxisAlign, FemurAxisAlignd, FemurAxisFit
from muscle_pipeline.transforms.intensity import (
    CTWindow,
    CTWindowd,
    MRNormalize,
    MRNormalized,
    intensity_preset,
    otsu_body_mask,
)
from muscle_pipeline.transforms.legs import (
    LegCrop,
    MirrorToRight,
    MirrorToRightd,
    SplitLegs,
    SplitLegsd,
    body_mask,
    leg_axes,
    merge_legs,
    owned_mask,
    plan_legs,
    segment_per_leg,
    split_legs,
)
from muscle_pipeline.transforms.region import REGIONS, RegionResult, SideResult, recognize_region, recognize_side
from muscle_pipeline.transforms.stations import JoinResult, JoinStations, JoinStationsd, join_stations
