"""Simulated data the package itself needs at run time: :mod:`.other_leg` (a simulated
contralateral leg of a labelled one), which ``evaluation.evaluate_datalist`` draws for
``simulate_other_leg`` entries, as in ``bundles/calf_mri/configs/evaluate.json``.

The procedural phantoms that used to live here are development tooling, in ``tools.phantoms``
(tests, benchmarks, docs figures), outside the installed package.
"""
