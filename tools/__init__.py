"""Development tooling of muscle_pipeline: generators of test and demo data, the builder of the
shipped photo demo model and one-off experiments. Used by tests/, benchmarks/, docs/*.py and by
hand from the repository root; never by the runtime package (``muscle_pipeline`` must not import
``tools``), and not shipped in the wheel or the Docker image.

* ``tools.phantoms`` — procedural thigh/calf/hip phantoms (MR or CT) with a label for every
  voxel;
* ``tools.photo_synthetic`` — procedurally drawn gym photos with activated-muscle masks
  (``python -m tools.photo_synthetic OUT --train 600 --val 60 --test 100``);
* ``tools.photo_score`` — a photo model's scores on freshly drawn synthetic photos
  (``python -m tools.photo_score --model M --photos 100 --seed 1000``);
* ``tools.photo_demo_model`` — builds ``bundles/gym_photo``'s demo weights in one command;
* ``tools.thigh25d_compare`` — seed 004's held-out-leg comparison of 2.5D vs 2D vs 3D on the real
  CT (``bundles/thigh_ct_25d/configs/evaluate.json`` runs it).

Import it with the repository root on ``sys.path``: pytest adds it (``pythonpath`` in
pyproject.toml), ``python -m tools.x`` and ``python -m monai.bundle run`` from the root have it,
and scripts run as ``python benchmarks/x.py`` or ``python docs/x.py`` insert it themselves.
"""
