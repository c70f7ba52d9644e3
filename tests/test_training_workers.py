"""Training samples drawn in DataLoader worker processes (``num_workers``), so that a GPU does not
wait for the CPU's synthesis: each worker draws its own samples (forked workers would otherwise
repeat each other's crops and images), a run is repeatable, and the atlas trainer trains with them."""
from __future__ import annotations

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandGaussianNoise

from muscle_pipeline.cascade.training import CascadeTrainer
from muscle_pipeline.training_loop import batch_drawer
from test_atlas_training import MUSCLES, atlas_bundle, entries  # noqa: F401 (fixtures)


def _draws(num_workers: int, seed: int = 0, batches: int = 6) -> list[np.ndarray]:
    """Each sample: a crop position from the worker's numpy generator and noise from a MONAI
    randomisable transform (the two kinds of randomness the trainer's draws have)."""
    noise = RandGaussianNoise(prob=1.0, std=1.0)

    def sample(rng):
        start = int(rng.integers(1000))
        return {"image": noise(torch.zeros(1, 4)) + start, "start": torch.tensor(start)}

    with batch_drawer(sample, 2, np.random.default_rng(seed), num_workers, seed=seed,
                      reseed=noise.set_random_state) as draw:
        return [b["image"].numpy().ravel() for _ in range(batches) for b in draw()]


def test_workers_draw_different_samples_and_a_run_repeats():
    in_process = _draws(0)
    assert len({tuple(d.round(6)) for d in in_process}) == len(in_process)
    two = _draws(2)
    # no worker repeats another's draws: neither the crop position nor the transform's noise
    assert len({tuple(d.round(6)) for d in two}) == len(two)
    starts = [float(np.floor(d.mean() + 0.5)) for d in two]
    noise = [tuple((d - d.mean()).round(6)) for d in two]
    assert len(set(noise)) == len(noise)
    assert len(set(starts)) >= len(starts) - 1  # crop positions: 12 draws of 1000 may collide once
    # the same seed and workers: the same draws, in the same order; another seed: others
    assert all(np.array_equal(a, b) for a, b in zip(two, _draws(2)))
    assert not any(np.array_equal(a, b) for a, b in zip(two, _draws(2, seed=1)))


def test_atlas_trainer_trains_with_sample_workers(atlas_bundle, entries, tmp_path):  # noqa: F811
    train_config = ConfigParser()
    train_config.read_config(str(atlas_bundle / "configs" / "train.json"))
    trainer = CascadeTrainer(atlas_bundle, entries, train_config.get_parsed_content("augmentation_stage1"),
                             train_config.get_parsed_content("augmentation_stage2"), stage1_iterations=4,
                             stage2_iterations=3, lr=0.01, max_patch=(32, 32, 32), output_dir=str(tmp_path),
                             probe_samples=0, num_workers=2)
    written = trainer.run(stage=1) + trainer.run(stage=2, muscle=MUSCLES[0])
    assert {p.name for p in written} == {"stage1.pt", f"stage2_{MUSCLES[0]}.pt"}
    assert all(len(v) == n and np.isfinite(v).all() for v, n in zip(trainer.losses.values(), (4, 3)))
