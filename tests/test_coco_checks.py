"""The COCO loader checks every image and annotation before any model runs: a bad one is a one-line
error naming the annotation file and the annotation (or image), or, with on_bad_annotation="skip",
dropped and counted. Images of more than 8 bits are scaled by value range, never clipped."""
import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from spatialprobe.data import dataset_hash, generate_synthetic_shapes, load_coco
from spatialprobe.errors import SpatialProbeError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp("d") / "shapes", objects_per_image=2,
                                     n_train=4, n_val=0, n_test=2, image_size=64)


def train_json(root):
    return json.loads((root / "annotations/instances_train.json").read_text())


def edited(shapes, folder, edit):
    """A copy of `shapes` whose train annotations went through edit(data)."""
    shutil.copytree(shapes, folder)
    data = train_json(folder)
    edit(data)
    (folder / "annotations/instances_train.json").write_text(json.dumps(data))
    return folder


def box_only(ann, bbox):
    """The annotation without segmentation or area, so only `bbox` speaks (the loader draws the box)."""
    ann.pop("segmentation"), ann.pop("area")
    ann["bbox"] = bbox


def zero_mask(ann):
    rle = mask_utils.encode(np.zeros((64, 64), np.uint8, order="F"))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}


# each case edits the first annotation (id 1, on image train_00000.png, whose other object stays good)
BAD_ANNOTATIONS = {
    "bbox_outside_image": (lambda a: box_only(a, [70, 10, 20, 20]), r"bbox \[70, 10, 20, 20\] reaches outside the 64x64 image"),
    "bbox_not_positive": (lambda a: box_only(a, [50, 0, -40, 40]), r"bbox \[50, 0, -40, 40\] has width -40 and height 40; both must be positive"),
    "bbox_malformed": (lambda a: a.update(bbox=[1, 2, 3]), r"bbox \[1, 2, 3\] is not \[x, y, width, height\]"),
    "mask_empty": (zero_mask, r"its mask covers no pixel"),
    "mask_outside_bbox": (lambda a: a.update(bbox=[0, 0, 2, 2], area=4.0), r"its mask spans .* beyond its bbox \[0, 0, 2, 2\]"),
    "area_mismatch": (lambda a: a.update(area=a["area"] * 3), r"area .* disagrees with the \d+ px of its mask"),
    "segmentation_invalid": (lambda a: a["segmentation"].update(size=[32, 32]),
                             r"segmentation cannot be read: its RLE size \[32, 32\] is not the image's"),
}


@pytest.mark.parametrize("reason", list(BAD_ANNOTATIONS))
def test_bad_annotation_is_a_one_line_error_naming_file_and_id(shapes, tmp_path, reason):
    edit, what = BAD_ANNOTATIONS[reason]
    root = edited(shapes, tmp_path / reason, lambda data: edit(data["annotations"][0]))
    with pytest.raises(SpatialProbeError, match=r"instances_train\.json: annotation id 1 \(image train_00000\.png\): " + what) as err:
        load_coco(root, "train")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("reason", list(BAD_ANNOTATIONS))
def test_bad_annotation_is_skipped_with_a_warning_and_counted(shapes, tmp_path, reason):
    edit, _ = BAD_ANNOTATIONS[reason]
    root = edited(shapes, tmp_path / reason, lambda data: edit(data["annotations"][0]))
    with pytest.warns(UserWarning, match=rf"instances_train\.json: dropped \({reason}: 1\); first: annotation id 1"):
        data = load_coco(root, "train", on_bad_annotation="skip")
    assert data.skipped == {reason: 1}
    assert len(data) == 4 and [a["id"] for a in data.records[0].annotations] == [2]
    assert data.mask(0).sum() == data.records[0].annotations[0]["area"]  # only the good object is left


def test_an_image_left_without_annotations_is_dropped_and_counted(shapes, tmp_path):
    def break_first_image(data):
        for ann in data["annotations"][:2]:  # both objects of train_00000.png
            box_only(ann, [70, 10, 20, 20])
    root = edited(shapes, tmp_path / "emptied", break_first_image)
    with pytest.warns(UserWarning):
        data = load_coco(root, "train", on_bad_annotation="skip")
    assert data.skipped == {"bbox_outside_image": 2, "image_without_annotations": 1}
    assert [r.file.name for r in data.records] == ["train_00001.png", "train_00002.png", "train_00003.png"]


def test_image_size_must_match_the_json(shapes, tmp_path):
    root = edited(shapes, tmp_path / "size", lambda data: data["images"][0].update(width=80))
    with pytest.raises(SpatialProbeError, match=r"instances_train\.json: image .*train_00000\.png is 64x64 px but the JSON says 80x64$"):
        load_coco(root, "train")
    with pytest.warns(UserWarning, match="image_size_mismatch: 1"):
        data = load_coco(root, "train", on_bad_annotation="skip")
    assert data.skipped == {"image_size_mismatch": 1} and len(data) == 3  # its annotations go with it, uncounted
    assert all(data.mask(i).shape == (64, 64) for i in range(len(data)))


def test_a_box_a_little_past_the_edge_is_drawn_from_the_edge(shapes, tmp_path):
    # within the 1-px tolerance for float rounding: x = -0.6 must not wrap round to the last column
    root = edited(shapes, tmp_path / "edge", lambda data: box_only(data["annotations"][0], [-0.6, 10, 20, 20]))
    data = load_coco(root, "train")
    mask = data.mask(0, annotations=data.records[0].annotations[:1])
    assert mask.sum() == 19 * 20 and mask[10:30, :19].all()


def test_skipping_changes_the_dataset_hash_only_when_something_is_dropped(shapes, tmp_path):
    clean = load_coco(shapes, "train", on_bad_annotation="skip")
    assert dataset_hash(shapes, clean) == dataset_hash(shapes)
    root = edited(shapes, tmp_path / "bad", lambda data: box_only(data["annotations"][0], [70, 10, 20, 20]))
    with pytest.warns(UserWarning):
        skipping = load_coco(root, "train", on_bad_annotation="skip")
    assert dataset_hash(root, skipping) != dataset_hash(root)  # other targets: other cached results


# two annotations of COCO val2017 as published (a polygon and a crowd RLE): float rounding, a
# crowd box a pixel short of its mask and an area 6% off its RLE must all pass
COCO_POLYGON = {"id": 1768, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 702.1057499999998,
                "bbox": [473.07, 395.93, 38.65, 28.67], "segmentation": [[
                    510.66, 423.01, 511.72, 420.03, 510.45, 416.0, 510.34, 413.02, 510.77, 410.26, 510.77, 407.5, 510.34,
                    405.16, 511.51, 402.83, 511.41, 400.49, 510.24, 398.16, 509.39, 397.31, 504.61, 399.22, 502.17, 399.64,
                    500.89, 401.66, 500.47, 402.08, 499.09, 401.87, 495.79, 401.98, 490.59, 401.77, 488.79, 401.77, 485.39,
                    398.58, 483.9, 397.31, 481.56, 396.35, 478.48, 395.93, 476.68, 396.03, 475.4, 396.77, 473.92, 398.79,
                    473.28, 399.96, 473.49, 401.87, 474.56, 403.47, 473.07, 405.59, 473.39, 407.71, 476.68, 409.41, 479.23,
                    409.73, 481.56, 410.69, 480.4, 411.85, 481.35, 414.93, 479.86, 418.65, 477.32, 420.03, 476.04, 422.58,
                    479.02, 422.58, 480.29, 423.01, 483.79, 419.93, 486.66, 416.21, 490.06, 415.57, 492.18, 416.85, 491.65,
                    420.24, 492.82, 422.9, 493.56, 424.39, 496.43, 424.6, 498.02, 423.01, 498.13, 421.31, 497.07, 420.03,
                    497.07, 415.15, 496.33, 414.51, 501.1, 411.96, 502.06, 411.32, 503.02, 415.04, 503.33, 418.12, 501.1,
                    420.24, 498.98, 421.63, 500.47, 424.39, 505.03, 423.32, 506.2, 421.31, 507.69, 419.5, 506.31, 423.32,
                    510.03, 423.01, 510.45, 423.01]]}
COCO_CROWD = {"id": 900100049759, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 3074, "bbox": [45, 167, 519, 65],
              "segmentation": {"size": [457, 640], "counts": [
                  20736, 2, 453, 5, 452, 9, 447, 13, 444, 13, 443, 15, 442, 15, 442, 15, 443, 15, 442, 15, 443, 14, 444, 13, 446,
                  10, 448, 8, 451, 4, 108769, 9, 446, 12, 439, 19, 1, 14, 8, 11, 402, 39, 3, 14, 401, 57, 399, 59, 398, 59, 397, 60,
                  397, 60, 397, 60, 398, 59, 397, 60, 397, 60, 397, 59, 399, 57, 400, 15, 1, 9, 7, 25, 401, 14, 16, 26, 402, 12, 15,
                  28, 404, 9, 14, 30, 406, 5, 14, 31, 406, 50, 405, 50, 407, 44, 412, 41, 7, 6, 402, 40, 7, 9, 401, 40, 7, 10, 399,
                  40, 7, 12, 398, 39, 8, 12, 397, 39, 8, 13, 397, 60, 397, 60, 397, 61, 396, 61, 397, 61, 396, 62, 396, 61, 397, 60,
                  399, 4, 1, 53, 405, 52, 406, 51, 407, 50, 408, 17, 1, 30, 410, 8, 2, 4, 18, 14, 413, 4, 32, 6, 95474, 8, 5, 14,
                  428, 11, 2, 17, 425, 33, 412, 1, 3, 41, 410, 4, 1, 43, 409, 48, 408, 50, 407, 51, 405, 52, 405, 47, 5, 1, 404,
                  28, 4, 8, 418, 25, 432, 24, 434, 22, 436, 12, 2, 6, 439, 5, 34552]}}


def test_real_coco_annotations_pass(tmp_path):
    (tmp_path / "annotations").mkdir()
    images = [{"id": 1, "file_name": "a.png", "width": 640, "height": 480},
              {"id": 2, "file_name": "b.png", "width": 640, "height": 457}]
    for image in images:
        Image.new("RGB", (image["width"], image["height"])).save(tmp_path / image["file_name"])
    (tmp_path / "annotations/instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": [COCO_POLYGON, COCO_CROWD], "categories": [{"id": 1}, {"id": 18}]}))
    data = load_coco(tmp_path, "train")
    assert data.skipped == {} and [data.mask(i).sum() for i in range(2)] == [703, 2913]


# --- images of more than 8 bits -------------------------------------------------------------------
def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG, written by hand: PIL cannot write one."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


RAMP = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1)  # 0 ... 1


def wide_image(kind: str) -> tuple[bytes, np.ndarray]:
    """(file bytes, the 8-bit grey levels that keep the values' place in their range)."""
    out = io.BytesIO()
    if kind == "I;16":  # 16-bit grayscale PNG
        Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)).save(out, "PNG")
    elif kind == "I;16B":
        Image.frombytes("I;16B", (64, 64), np.round(RAMP * 65535).astype(">u2").tobytes()).save(out, "TIFF")
    elif kind == "I":  # 32-bit integers holding 16-bit values
        Image.fromarray(np.round(RAMP * 65535).astype(np.int32)).save(out, "TIFF")
    elif kind == "F":  # floats in [0, 1]
        Image.fromarray(RAMP.astype(np.float32)).save(out, "TIFF")
    else:  # 16-bit RGB: PIL reduces it to 8 bits itself; kept here so a change there is caught
        return png_16bit_rgb(np.repeat(np.round(RAMP * 65535)[..., None], 3, axis=2)), np.round(RAMP * 255)
    return out.getvalue(), np.round(RAMP * 255)


@pytest.mark.parametrize("kind", ["I;16", "I;16B", "I", "F", "RGB;16"])
def test_wide_images_are_scaled_by_value_range_not_clipped(shapes, tmp_path, kind):
    content, expected = wide_image(kind)
    root = edited(shapes, tmp_path / "wide", lambda data: data["images"][0].update(file_name="wide.img"))
    (root / "images/train/wide.img").write_bytes(content)
    with Image.open(root / "images/train/wide.img") as image:
        assert image.mode == kind if kind != "RGB;16" else image.mode == "RGB"
    pixels = np.asarray(load_coco(root, "train").load_image(0)).astype(int)
    assert pixels.shape == (64, 64, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    assert (pixels < 255).mean() > 0.99  # not white
    assert np.abs(pixels[..., 0] - expected).max() <= 1  # every value keeps its place in the range


def test_image_sizes_must_be_positive_whole_numbers(shapes, tmp_path):
    root = edited(shapes, tmp_path / "negative", lambda data: data["images"][1].update(height=-64))
    with pytest.raises(SpatialProbeError, match=r"instances_train\.json: images\[1\]\.height -64 is not a positive integer"):
        load_coco(root, "train")
    root = edited(shapes, tmp_path / "float", lambda data: data["images"][1].update(height=64.0))  # as some converters write it
    assert load_coco(root, "train").records[1].height == 64
