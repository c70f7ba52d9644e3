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
