"""Synthetic gym photos, the seed and Roboflow folder layouts, and the photo transforms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from muscle_pipeline.errors import InputError
from muscle_pipeline.photo import CLASS_NAMES
from muscle_pipeline.photo.data import class_index_for, find_dataset, list_images, read_classes_csv
from tools.photo_synthetic import ROBOFLOW_CLASSES, make_photo, write_dataset
from muscle_pipeline.photo.transforms import (
    EnsureRGB,
    MaskToClassIndex,
    RandGrayscale,
    RandSaltPepperNoise,
    augmentation_transforms,
    eval_transforms,
    input_error_in,
    photo_to_tensor,
    train_transforms,
)


def test_synthetic_photos_label_only_activated_muscles():
    rng = np.random.default_rng(7)
    photos = [make_photo(rng, (96, 128)) for _ in range(40)]
    image, mask = photos[0]
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 128) and mask.dtype == np.uint8
    present = np.array([[np.any(m == c) for c in range(4)] for _, m in photos])
    assert set(np.unique(np.concatenate([m.ravel() for _, m in photos]))) <= {0, 1, 2, 3}
    # Every muscle shows up activated in some photos and is absent (relaxed or out of frame) in others.
    assert present[:, 1:].any(0).all() and not present[:, 1:].all(0).any()
    # Muscles are a small part of a photo: the rest (people included) is background.
    assert np.mean([np.mean(m > 0) for _, m in photos]) < 0.1
    # Same seed, same photo.
    again = make_photo(np.random.default_rng(7), (96, 128))
    assert np.array_equal(again[0], image) and np.array_equal(again[1], mask)


def test_seed_layout_with_80_20_split(tmp_path):
    write_dataset(tmp_path, {"train": 10, "test": 2}, size=(64, 64), seed=1)
    lists = find_dataset(tmp_path, val_fraction=0.2, seed=0)
    assert lists.layout == "seed" and lists.val_from_train
    assert (len(lists.train), len(lists.val), len(lists.test)) == (8, 2, 2)
    names = {i["name"] for i in lists.train} | {i["name"] for i in lists.val}
    assert len(names) == 10
    assert [i["name"] for i in find_dataset(tmp_path, seed=0).val] == [i["name"] for i in lists.val]
    data = eval_transforms(64, lists.label_lut)(lists.train[0])
    raw = np.asarray(Image.open(lists.train[0]["label"]))
    assert data["image"].shape == (3, 64, 64) and 0.0 <= float(data["image"].min()) <= float(data["image"].max()) <= 1.0
    # MONAI's PIL reader puts x first: the loaded mask is the PNG transposed.
    assert np.array_equal(data["label"][0].numpy().T, raw)


def test_roboflow_export_maps_pixel_values_by_class_name(tmp_path):
    write_dataset(tmp_path, {"train": 4, "valid": 2}, layout="roboflow", size=(64, 64), seed=3)
    lists = find_dataset(tmp_path)
    assert lists.layout == "roboflow" and not lists.val_from_train
    assert (len(lists.train), len(lists.val)) == (4, 2)
    assert lists.train[0]["image"].endswith(".jpg") and lists.train[0]["label"].endswith("_mask.png")
    # Roboflow numbers classes alphabetically: calf is 2 and triceps 3 in the file, 3 and 2 for us.
    assert read_classes_csv(tmp_path / "train" / "_classes.csv") == {0: 0, 1: 1, 2: 3, 3: 2}
    seen = set()
    for item in lists.train + lists.val:
        raw = np.asarray(Image.open(item["label"]))
        label = eval_transforms(64, lists.label_lut)(item)["label"][0].numpy().T
        for raw_value, ours in ((1, 1), (2, 3), (3, 2)):
            if (raw == raw_value).any():
                seen.add(raw_value)
                assert (label[raw == raw_value] == ours).all()
    assert seen, "the synthetic export should contain at least one muscle"
    assert ROBOFLOW_CLASSES[2].lower().startswith("calf")


def test_bad_datasets_name_the_file(tmp_path):
    write_dataset(tmp_path / "a", {"train": 3}, layout="roboflow", size=(32, 32))
    csv_file = tmp_path / "a" / "train" / "_classes.csv"
    csv_file.write_text("Pixel Value, Class\n0, background\n1, hamstring\n")
    with pytest.raises(InputError, match="hamstring") as err:
        find_dataset(tmp_path / "a")
    assert err.value.path == csv_file

    write_dataset(tmp_path / "b", {"train": 2}, size=(32, 32))
    orphan = tmp_path / "b" / "train" / "masks" / "train_0001.png"
    orphan.unlink()
    with pytest.raises(InputError, match="no mask") as err:
        find_dataset(tmp_path / "b")
    assert err.value.path.name == "train_0001.png"

    write_dataset(tmp_path / "c", {"train": 2}, size=(32, 32))
    bad_mask = tmp_path / "c" / "train" / "masks" / "train_0000.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad_mask)
    lists = find_dataset(tmp_path / "c")
    item = next(i for i in lists.train + lists.val if i["label"] == str(bad_mask))
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps what a transform raises
        eval_transforms(32, lists.label_lut)(item)
    cause = input_error_in(err.value)
    assert cause is not None and "[7]" in str(cause) and str(bad_mask) in str(cause)

    with pytest.raises(InputError):
        find_dataset(tmp_path / "missing")
    assert class_index_for("Flexed Biceps") == 1 and class_index_for("calves") == 3 and class_index_for("quads") is None


def test_list_images_file_and_folder(tmp_path):
    write_dataset(tmp_path, {"x": 2}, size=(32, 32))
    folder = tmp_path / "x" / "images"
    assert len(list_images(folder)) == 2
    assert list_images(folder / "x_0000.png") == [{"image": str(folder / "x_0000.png")}]
    with pytest.raises(InputError):
        list_images(tmp_path / "nothing_here.png")


def test_array_transforms():
    gray = torch.rand(1, 5, 4)
    assert EnsureRGB()(gray).shape == (3, 5, 4) and torch.equal(EnsureRGB()(gray)[2], gray[0])
    assert EnsureRGB()(torch.rand(4, 5, 4)).shape == (3, 5, 4)
    with pytest.raises(InputError):
        EnsureRGB()(torch.rand(5, 5, 4))

    rgb = torch.rand(3, 16, 16)
    out = RandGrayscale(prob=1.0)(rgb)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])

    noise = RandSaltPepperNoise(prob=1.0, max_fraction=0.0022)
    noise.set_random_state(0)
    img = torch.full((3, 200, 200), 0.5)
    changed = []
    for _ in range(20):
        out = noise(img)
        hit = (out != 0.5).any(0)
        assert set(out[:, hit].unique().tolist()) <= {0.0, 1.0}
        changed.append(float(hit.float().mean()))
    assert max(changed) <= 0.0022 * 1.5 and max(changed) > 0  # "up to 0.22 % of pixels"

    lut = np.full(256, -1)
    lut[[0, 10, 20]] = [0, 2, 3]
    mapped = MaskToClassIndex(lut)(torch.tensor([[[0, 10], [20, 0]]]).float())
    assert mapped.dtype == torch.int64 and mapped.tolist() == [[[0, 2], [3, 0]]]
    colour = torch.zeros(3, 2, 2)
    colour[0, 0, 0] = 10
    with pytest.raises(InputError, match="colour"):
        MaskToClassIndex(lut)(colour)


def test_augmentation_moves_photo_and_mask_together():
    # A photo whose gray value encodes its own mask: after flips and shear the two must still agree.
    mask = np.zeros((64, 64), np.int64)
    mask[8:30, 10:40], mask[35:60, 20:30], mask[40:50, 45:62] = 1, 2, 3
    steps = augmentation_transforms(64, flip_prob=0.5, shear_prob=1.0, grayscale_prob=0.0, blur_prob=0.0, noise_prob=0.0)
    shear = next(s for s in steps if type(s).__name__ == "RandAffined")
    shear_range = np.asarray(shear.rand_affine.rand_affine_grid.shear_range, dtype=float)
    assert np.allclose(np.abs(shear_range), math.tan(math.radians(15)))  # ±15 degrees on both axes
    from monai.transforms import Compose

    pipeline = Compose(steps)
    pipeline.set_random_state(1)
    agree, moved = [], 0
    for _ in range(12):
        image = torch.from_numpy(mask[None].repeat(3, 0)).float() / 3.0
        out = pipeline({"image": image, "label": torch.from_numpy(mask[None])})
        label = out["label"][0].numpy()
        assert set(np.unique(label)) <= {0, 1, 2, 3}  # nearest neighbour keeps labels categorical
        decoded = np.rint(out["image"][0].numpy() * 3.0)
        agree.append(np.mean(decoded == label))
        moved += not np.array_equal(label, mask)
    assert min(agree) > 0.97 and moved >= 8


def test_train_pipeline_output_and_photo_tensor(tmp_path):
    write_dataset(tmp_path, {"train": 2}, size=(48, 80))
    lists = find_dataset(tmp_path)
    pipeline = train_transforms(64, lists.label_lut)
    pipeline.set_random_state(0)
    out = pipeline(lists.train[0])
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
    assert out["label"].dtype == torch.int64
    assert len(CLASS_NAMES) == 4
    hwc = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = photo_to_tensor(hwc)
    assert t.shape == (3, 3, 2) and float(t[1, 2, 0]) == float(hwc[0, 2, 1])
