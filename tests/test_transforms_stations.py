"""Multi-station join: overlaps recovered on cut-up real data, the seven real stations, the CLI."""
from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from muscle_pipeline.cli import main
from muscle_pipeline.transforms.stations import JoinStationsd, join_stations, normalized_cross_correlation

torch.set_num_threads(2)
STATIONS = [f"qmritools/wholeleg_stations_unlabeled/Join_{i}.nii.gz" for i in range(1, 8)]
CALF = "swastling_musclemap/calf_dixon3d_unlabeled/0026-dix3d_TR23_448m_fa05_345.nii.gz"


def load(shared_data, rel) -> MetaTensor:
    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(shared_data / rel))


def neighbour_correlations(volume: np.ndarray, start: int, stop: int) -> list[float]:
    """NCC of slices k and k+1 along the last axis for k in [start, stop)."""
    return [normalized_cross_correlation(volume[..., k], volume[..., k + 1]) for k in range(start, stop)]


def station(array: np.ndarray, affine: np.ndarray, reverse: bool = False) -> MetaTensor:
    """A station with the given (shared) header; ``reverse`` stores its slices top-down."""
    if reverse:
        n = array.shape[-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, n - 1
        return MetaTensor(torch.as_tensor(array[..., ::-1].copy()), affine=torch.as_tensor(affine @ flip))
    return MetaTensor(torch.as_tensor(array.copy()), affine=torch.as_tensor(affine))


def test_join_recovers_known_overlaps_of_a_cut_up_scan(shared_data):
    """Cut a real 96-slice calf scan into three stations with one shared header, known overlaps
    (7 and 6 slices) and different intensity scales; store the middle one top-down. Joining must
    find the overlaps and give back the scan itself."""
    image = load(shared_data, CALF)
    volume = image.numpy().astype(np.float32)[:, ::2, ::2, :]  # coarser in-plane: faster, same test
    affine = np.asarray(image.affine, dtype=float).copy()
    affine[:3, :2] *= 2
    parts = [volume[..., 0:40], volume[..., 33:70] * 1.3, volume[..., 64:96] * 0.8]
    stations = [station(parts[0], affine), station(parts[1], affine, reverse=True), station(parts[2], affine)]
    result = join_stations(stations)
    assert result.overlaps == [7, 6]
    assert result.offsets == [0, 33, 64]
    assert np.allclose(result.scales, [1.0, 1 / 1.3, 1 / 0.8], rtol=1e-4)
    assert tuple(result.image.shape) == volume.shape
    assert np.allclose(result.image.numpy(), volume, rtol=1e-4, atol=1e-3)
    assert np.allclose(np.asarray(result.image.affine), affine)  # slice 0 where station 1 starts


def test_join_of_the_seven_whole_leg_stations(shared_data):
    stations = [load(shared_data, rel) for rel in STATIONS]
    result = join_stations(stations)
    heights = [s.shape[-1] for s in stations]
    longest = min(heights) // 2
    print("overlaps (slices):", result.overlaps, "NCC:", np.round(result.correlations, 3))
    # every overlap is a real peak inside the search range, not its edge
    assert all(1 < n < longest for n in result.overlaps), result.overlaps
    for n, curve in zip(result.overlaps, result.curves):
        assert curve[n - 1] >= max(curve[0], curve[-1]) + 0.03
    # joined height = sum of stations minus overlaps; z origin from the first station, upwards
    assert result.image.shape[-1] == sum(heights) - sum(result.overlaps)
    affine = np.asarray(result.image.affine)
    assert np.allclose(affine, np.asarray(stations[0].affine))
    assert affine[2, 2] > 0
    # seams are continuous: the neighbour correlation through each blended overlap is no worse
    # than the worst neighbour correlation near that end of the two stations themselves
    joined = result.image[0].numpy()
    for i, (offset, n) in enumerate(zip(result.offsets[1:], result.overlaps)):
        seam = neighbour_correlations(joined, offset - 1, offset + n)
        lower, upper = stations[i][0].numpy(), stations[i + 1][0].numpy()
        local = neighbour_correlations(lower, lower.shape[-1] - 9, lower.shape[-1] - 1) + neighbour_correlations(upper, 0, 8)
        assert min(seam) >= min(local), (i, min(seam), min(local))


def test_stations_given_head_first_are_flagged(shared_data):
    lower, upper = load(shared_data, STATIONS[2]), load(shared_data, STATIONS[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        join_stations([lower, upper])  # right order: no warning
    with pytest.warns(UserWarning, match="inferior to superior"):
        join_stations([upper, lower])


def test_dictionary_transform_joins_named_keys(shared_data):
    data = {f"s{i}": load(shared_data, STATIONS[i]) for i in (4, 5)}
    out = JoinStationsd(keys=["s4", "s5"], output_key="image")(data)
    assert out["image"].shape[-1] == 62 - out["image"].meta["station_overlaps"][0]


def test_join_command_writes_atomically_and_reports(shared_data, tmp_path, capsys):
    target = tmp_path / "joined.nii.gz"
    paths = [str(shared_data / rel) for rel in STATIONS[1:3]]
    assert main(["join", *paths, "-o", str(target)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = nib.load(str(target))
    assert written.shape == (320, 320, 62 - report["overlaps"][0])
    assert np.allclose(written.affine, nib.load(paths[0]).affine)
    assert [p.name for p in tmp_path.iterdir()] == ["joined.nii.gz"]  # no temporary left behind

    mismatched = str(shared_data / "totalsegmentator/ct_abdomen_pelvis/example_ct.nii.gz")
    assert main(["join", paths[0], mismatched, "-o", str(tmp_path / "bad.nii.gz")]) == 1
    assert "example_ct.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "bad.nii.gz").exists()


def test_join_command_rejects_bad_overlaps(shared_data, tmp_path, capsys):
    paths = [str(shared_data / rel) for rel in STATIONS[1:3]]
    assert main(["join", *paths, "--overlaps", "40", "-o", str(tmp_path / "j.nii.gz")]) == 2
    assert "overlap 40" in capsys.readouterr().err
    assert main(["join", paths[0], "-o", str(tmp_path / "j.nii.gz")]) == 2
    assert not list(tmp_path.iterdir())
