"""Procedural phantoms: bilateral thigh, calf and hip volumes with MR or CT contrast and a label
for every voxel, for tests, benchmarks and the docs' figures where real labels are missing
(development tooling, not part of the installed package; the simulated other leg that the
package's evaluation needs stays in ``muscle_pipeline.synthetic.other_leg``).

    from tools.phantoms import make_phantom, save_phantom
    ph = make_phantom("calf", "mr", shape=(128, 128, 64), orientation="LPS", seed=3)
    ph.image, ph.labels   # MetaTensors (X, Y, Z), same voxel->RAS affine
    ph.info["legs"]["left"]["tibia_axis"]

The anatomy is defined in world millimetres and sampled on the requested grid, so one seed gives
the same physical object whatever the shape, spacing, orientation code or slab size; the subject's
left leg lies at smaller world (RAS) x and carries the left labels (base + 100).
"""
from .anatomy import REGIONS
from .phantom import MODALITIES, Phantom, available_muscles, make_phantom, save_phantom

__all__ = ["make_phantom", "save_phantom", "Phantom", "available_muscles", "REGIONS", "MODALITIES"]
