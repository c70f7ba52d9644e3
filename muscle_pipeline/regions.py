"""The body-region vocabulary shared by recognition, routing and the bundles' declared coverage.

Plain names, no dependencies: routing and the CLI's argument checks use them before torch and
MONAI are imported (an error about the input or the model name comes back at once).
"""
from __future__ import annotations

REGIONS = ("foot", "leg", "knee", "thigh", "hip")  # inferior → superior
NOT_LOWER_LIMB = "none"  # a slice (or scan) with no lower limb in it: trunk, abdomen, lumbar spine

# how the console and reports say each region ("CT, no lower limb (20 slices)")
REGION_WORDS = {"foot": "feet", "leg": "calves", "knee": "knees", "thigh": "thighs",
                "hip": "hips/pelvis", NOT_LOWER_LIMB: "no lower limb"}
