"""synthetic_shapes with random colours, distractors and the `hard` preset; targets at one resolution."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spatialprobe.data import dataset_hash, generate_synthetic_shapes, load_coco
from spatialprobe.data.shapes import PALETTE
from spatialprobe.errors import SpatialProbeError
from spatialprobe.runner import probe_split, resize_mask

SMALL = dict(n_train=16, n_val=0, n_test=4, image_size=96)


def ring(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within `width` (chessboard distance) of the mask, outside it."""
    grown = mask.copy()
    padded = np.pad(mask, width)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            grown |= padded[width + dy:width + dy + mask.shape[0], width + dx:width + dx + mask.shape[1]]
    return grown & ~mask


def objects(data, i):
    """(annotation, mask) of every object of image i."""
    record = data.records[i]
    return [(a, data._object_mask(record, a)) for a in record.annotations]


@pytest.fixture(scope="module")
def random_texture(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp("d") / "rt", colors="random", background="texture",
                                     distractors=2, **SMALL)


def test_random_colours_are_seeded(random_texture, tmp_path):
    again = generate_synthetic_shapes(tmp_path / "again", colors="random", background="texture", distractors=2, **SMALL)
    other = generate_synthetic_shapes(tmp_path / "other", colors="random", background="texture", distractors=2,
                                      seed=1, **SMALL)
    assert dataset_hash(again) == dataset_hash(random_texture) != dataset_hash(other)


@pytest.mark.parametrize("background", ["plain", "noise", "texture"])
def test_random_colours_contrast_with_the_background_around_each_shape(tmp_path, background):
    min_contrast = 120.0
    data = load_coco(generate_synthetic_shapes(tmp_path / background, colors="random", background=background,
                                               distractors=2, min_contrast=min_contrast, **SMALL), "train")
    colours = set()
    for i in range(len(data)):
        pixels = np.asarray(data.load_image(i)).astype(float)
        union = data.mask(i)
        for _ann, mask in objects(data, i):
            shape_colour = pixels[mask][0]
            assert (pixels[mask] == shape_colour).all()
            colours.add(tuple(shape_colour))
            around = pixels[ring(mask) & ~union]
            if not len(around):
                continue
            if background == "noise":  # sd-20 noise around the base colour: its mean is what the shape contrasts with
                assert np.linalg.norm(around.mean(0) - shape_colour) >= min_contrast - 15
            else:
                distances = np.linalg.norm(np.unique(around, axis=0) - shape_colour, axis=1)
                assert distances.min() >= min_contrast
    palette = {tuple(float(c) for c in rgb) for rgb in PALETTE.values()}
    assert len(colours - palette) > 20  # any RGB, not the palette


def test_distractors_are_smaller_than_the_target(random_texture):
    data = load_coco(random_texture, "train")
    counts = []
    for i in range(len(data)):
        areas = sorted((a["area"] for a in data.records[i].annotations), reverse=True)
        counts.append(len(areas))
        assert len(areas) <= 3 and all(area < areas[0] for area in areas[1:])
        _box, target_mask = data.target(i)
        assert target_mask.sum() == areas[0]
    assert np.mean(counts) > 2  # distractors are left out only when they find no free place


def test_the_target_is_the_first_object_never_a_distractor(tmp_path):
    """With several objects, distractors are smaller than the smallest of them, so the largest is an object."""
    data = load_coco(generate_synthetic_shapes(tmp_path / "many", objects_per_image=2, distractors=3, **SMALL), "train")
    for i in range(len(data)):
        areas = [a["area"] for a in data.records[i].annotations]
        assert len(areas) >= 2 and max(areas[2:], default=0) < min(areas[:2])


def test_hard_preset_is_random_colours_on_texture_with_distractors(tmp_path):
    data = load_coco(generate_synthetic_shapes(tmp_path / "hard", preset="hard", **SMALL), "train")
    assert np.mean([len(r.annotations) for r in data.records]) > 2
    assert not any("colour" in a["attributes"] for r in data.records for a in r.annotations)  # no name to ask about
    pixels = np.asarray(data.load_image(0))
    assert len(np.unique(pixels[~data.mask(0)], axis=0)) == 2  # the texture's two colours


def test_noise_preset_is_random_colours_on_noise_with_distractors(tmp_path):
    data = load_coco(generate_synthetic_shapes(tmp_path / "noise", preset="noise", **SMALL), "train")
    assert np.mean([len(r.annotations) for r in data.records]) > 2
    assert not any("colour" in a["attributes"] for r in data.records for a in r.annotations)
    pixels = np.asarray(data.load_image(0))
    assert len(np.unique(pixels[~data.mask(0)], axis=0)) > 50  # per-pixel noise, not a plain or two-colour background


@pytest.mark.parametrize("kwargs, message", [
    ({"colors": "rainbow"}, "unknown colour"),
    ({"colors": "random", "min_contrast": 250}, "min_contrast 250"),
    ({"distractors": -1}, "distractors -1"),
    ({"preset": "medium"}, "unknown preset 'medium'; choose from easy, noise, hard"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(SpatialProbeError, match=message):
        generate_synthetic_shapes(tmp_path / "bad", **{**SMALL, **kwargs})
    assert not (tmp_path / "bad").exists()


def feats_of(n: int):
    """Stand-in features: probe_split only reads their tokens, footprints and placeless extras."""
    return SimpleNamespace(tokens=torch.zeros(n, 4, 3), footprints=torch.zeros(n, 4, 4), extra={})


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("image_size, mask_size", [(96, 64), (224, 112), (100, 112)])
def test_every_target_box_is_the_box_of_its_mask(random_texture, tmp_path, image_size, mask_size):
    root = generate_synthetic_shapes(tmp_path / "d", colors="random", distractors=2,
                                     **{**SMALL, "image_size": image_size})
    data = load_coco(root, "train")
    split = probe_split(data, feats_of(len(data)), mask_size=mask_size)
    assert split.masks.shape[1:] == (mask_size, mask_size)
    for mask, box in zip(split.masks.numpy(), split.boxes.numpy()):
        assert box_iou(box_of(mask), box) == pytest.approx(1.0, abs=1e-6)


def test_a_tiny_object_survives_the_resize():
    mask = np.zeros((224, 224), bool)
    mask[100, 36] = True  # one pixel nearest-neighbour sampling at half size never reads (it reads odd ones)
    resized = resize_mask(mask, 112)
    assert resized.sum() == 1 and resized[50, 18]


def test_command_line_writes_random_colours_and_distractors(tmp_path):
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    args = ["data", "synthetic-shapes", "--out", str(tmp_path / "d"), "--n-train", "8", "--n-val", "0", "--n-test", "8",
            "--image-size", "64", "--colors", "random", "--distractors", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = load_coco(tmp_path / "d", "train")
    assert all(len(a["attributes"]["rgb"]) == 3 for r in data.records for a in r.annotations)
    assert max(len(r.annotations) for r in data.records) == 3


def test_quickstart_and_phase1_data_have_random_colours_and_distractors():
    """The data that separates a trained encoder from its controls (README: presets and their margins)."""
    from pathlib import Path

    from spatialprobe.config import load_config, quickstart_config

    phase1 = load_config(Path(__file__).resolve().parents[1] / "configs" / "pivot4-phase1.yaml").dataset.shapes
    for shapes in (quickstart_config().dataset.shapes, phase1):
        assert shapes.colors == "random" and shapes.distractors >= 1
    assert (phase1.n_train, phase1.n_test, phase1.image_size) == (1000, 500, 448)
