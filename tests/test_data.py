"""synthetic_shapes: deterministic, exact boxes/masks, valid COCO; the loader names what is wrong."""
import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

from spatialprobe.data import dataset_hash, generate_synthetic_shapes, load_coco
from spatialprobe.data.shapes import PALETTE, SHAPES
from spatialprobe.errors import SpatialProbeError

SMALL = dict(n_train=12, n_val=2, n_test=6, image_size=64)


def copy_with(shapes, folder, train_json: dict):
    """A copy of the dataset whose train annotations are `train_json`."""
    shutil.copytree(shapes, folder)
    (folder / "annotations/instances_train.json").write_text(json.dumps(train_json))
    return folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp("d") / "shapes", objects_per_image=2, **SMALL)


def test_deterministic_and_seeded(shapes, tmp_path):
    again = generate_synthetic_shapes(tmp_path / "again", objects_per_image=2, **SMALL)
    other = generate_synthetic_shapes(tmp_path / "other", objects_per_image=2, seed=1, **SMALL)
    assert dataset_hash(again) == dataset_hash(shapes) != dataset_hash(other)


def test_more_test_images_leave_train_images_alone(shapes, tmp_path):
    bigger = generate_synthetic_shapes(tmp_path / "bigger", objects_per_image=2, **{**SMALL, "n_test": 9})
    assert (bigger / "images/train/train_00003.png").read_bytes() == (shapes / "images/train/train_00003.png").read_bytes()


def test_boxes_masks_and_pixels_agree(shapes):
    data = load_coco(shapes, "train")
    for i in range(len(data)):
        pixels = np.asarray(data.load_image(i))
        for ann in data.records[i].annotations:
            mask = data._object_mask(data.records[i], ann)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            colour = pixels[ys[0], xs[0]]
            assert (pixels[mask] == colour).all()  # every mask pixel has the object's colour
            assert tuple(colour) in {tuple(c) for c in PALETTE.values()}


def test_pycocotools_reads_it_back(shapes):
    coco = COCO(str(shapes / "annotations/instances_test.json"))
    data = load_coco(shapes, "test")
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    union = np.zeros((64, 64), bool)
    for ann in first:
        union |= coco.annToMask(ann).astype(bool)
    assert (union == data.mask(0)).all() and len(first) == 2
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(SHAPES)


def test_target_is_largest_object_normalized(shapes):
    data = load_coco(shapes, "train")
    box, mask = data.target(0)
    largest = max(data.records[0].annotations, key=lambda a: a["area"])
    assert mask.sum() == largest["area"]
    x, y, w, h = largest["bbox"]
    assert np.allclose(box, [x / 64, y / 64, (x + w) / 64, (y + h) / 64])


def test_easy_preset_is_bright_on_dark(tmp_path):
    data = load_coco(generate_synthetic_shapes(tmp_path / "easy", preset="easy", **SMALL), "train")
    for i in range(len(data)):
        pixels = np.asarray(data.load_image(i)).mean(axis=-1)
        mask = data.mask(i)
        assert pixels[mask].min() > 150 > 40 > pixels[~mask].max()


@pytest.mark.parametrize("background", ["plain", "noise", "texture"])
def test_backgrounds_and_every_shape(tmp_path, background):
    root = generate_synthetic_shapes(tmp_path / background, background=background, n_train=40, n_val=0, n_test=8, image_size=48)
    data = load_coco(root, "train")
    seen = {data.categories[a["category_id"]] for r in data.records for a in r.annotations}
    assert seen == set(SHAPES)
    pixels = np.asarray(data.load_image(0)).astype(int)
    background_pixels = pixels[~data.mask(0)]
    distinct = len(np.unique(background_pixels, axis=0))
    assert (distinct == 1) if background == "plain" else (distinct > 1)


def test_regeneration_is_noop_and_refuses_other_params(shapes):
    before = dataset_hash(shapes)
    assert generate_synthetic_shapes(shapes, objects_per_image=2, **SMALL) == shapes
    assert dataset_hash(shapes) == before
    with pytest.raises(SpatialProbeError, match="other parameters"):
        generate_synthetic_shapes(shapes, objects_per_image=2, **{**SMALL, "seed": 5})


def test_loader_errors_name_the_culprit(shapes, tmp_path):
    with pytest.raises(SpatialProbeError, match="dataset folder not found: .*nowhere"):
        load_coco(tmp_path / "nowhere", "train")
    with pytest.raises(SpatialProbeError, match="instances_valid.json"):
        load_coco(shapes, "valid")
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations/instances_train.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(SpatialProbeError, match="instances_train.json: missing or invalid field 'categories'"):
        load_coco(broken, "train")
    data = json.loads((shapes / "annotations/instances_train.json").read_text())
    del data["annotations"][0]["bbox"]
    no_bbox = copy_with(shapes, tmp_path / "no_bbox", data)
    with pytest.raises(SpatialProbeError, match=r"annotations\[0\] lacks field 'bbox'"):
        load_coco(no_bbox, "train")


def test_corrupt_image_is_named(shapes, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shapes, copy)
    (copy / "images/train/train_00002.png").write_bytes(b"not a png at all")
    with pytest.raises(SpatialProbeError, match="cannot read image .*train_00002.png"):
        load_coco(copy, "train").load_image(2)
