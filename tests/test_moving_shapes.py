"""moving_shapes: the shape moves the labelled way at constant speed (or accelerating), whole in every
frame; files are seeded per clip; masks, boxes and pixels agree; the loader reads PNG and WebM clips and
names bad ones; accelerating motion gives clips an arrow of time that the pixels control can read."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from spatialprobe import load_backbone
from spatialprobe.cli import app
from spatialprobe.data import clips_hash, load_clips
from spatialprobe.data.moving_shapes import generate_moving_shapes, plan_motion, webm_codec, write_webm
from spatialprobe.data.shapes import mask_box
from spatialprobe.data.video import DIRECTIONS, clip_view
from spatialprobe.errors import SpatialProbeError
from spatialprobe.probes.temporal import probe_ordering

SMALL = dict(n_train=24, n_val=1, n_test=2, frames=4, image_size=32)
#: the arrow-of-time datasets: accelerating, and the same clips at constant speed (same seed, same draws)
ARROW = dict(n_train=60, n_val=0, n_test=30, frames=8, image_size=32, preset="easy", seed=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return generate_moving_shapes(tmp_path_factory.mktemp("d") / "clips", **SMALL)


@pytest.fixture(scope="module")
def webm_clips(tmp_path_factory):
    return generate_moving_shapes(tmp_path_factory.mktemp("d") / "webm", **{**SMALL, "n_train": 4},
                                  video_format="webm")


@pytest.fixture(scope="module")
def arrow_clips(tmp_path_factory):
    """{motion: dataset root} for the ARROW parameters, constant and accelerating."""
    folder = tmp_path_factory.mktemp("arrow")
    return {motion: generate_moving_shapes(folder / motion, **ARROW, motion=motion)
            for motion in ("constant", "accelerating")}


def annotations(root, split="train"):
    return json.loads((root / split / "annotations.json").read_text())


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def box_centres(boxes):
    boxes = np.asarray(boxes, dtype=float)
    return (boxes[:, :2] + boxes[:, 2:]) / 2


@pytest.mark.parametrize("motion", ["constant", "accelerating"])
def test_box_moves_in_the_labelled_direction(clips, arrow_clips, motion):
    data = annotations(clips if motion == "constant" else arrow_clips[motion])
    assert data["labels"] == DIRECTIONS
    assert len({c["label"] for c in data["clips"]}) >= 6  # the check below covers most directions
    for clip in data["clips"]:
        shift = box_centres(clip["boxes"])[-1] - box_centres(clip["boxes"])[0]
        angle = math.radians(45 * clip["label"])
        expected = np.array([math.cos(angle), -math.sin(angle)])  # image y points down
        for axis in (0, 1):
            if abs(expected[axis]) < 1e-9:
                assert abs(shift[axis]) <= 1.0, (clip["id"], clip["direction"], shift)
            else:
                assert np.sign(shift[axis]) == np.sign(expected[axis]), (clip["id"], clip["direction"], shift)
        assert clip["direction"] == DIRECTIONS[clip["label"]]


@pytest.mark.parametrize("label", range(8))
def test_motion_is_straight_at_constant_speed_and_stays_inside(label):
    rng = np.random.default_rng(label)
    for _ in range(50):
        radius = rng.uniform(3, 10)
        centres, speed = plan_motion(rng, 32, 5, radius, label, (0.4, 1.0))
        steps = np.diff(centres, axis=0)
        np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(steps, axis=1), speed)
        heading = math.degrees(math.atan2(-steps[0, 1], steps[0, 0])) % 360
        assert heading == pytest.approx(45 * label, abs=1e-6)
        assert (centres - radius >= -1e-9).all() and (centres + radius <= 32 + 1e-9).all()


@pytest.mark.parametrize("label", range(8))
def test_accelerating_motion_speeds_up_linearly_along_the_label_and_stays_inside(label):
    rng = np.random.default_rng(label)
    for _ in range(50):
        radius = rng.uniform(3, 10)
        centres, speed = plan_motion(rng, 32, 6, radius, label, (0.4, 1.0), motion="accelerating")
        steps = np.diff(centres, axis=0)
        # from rest, the speed growing linearly: step t is speed * (2t + 1) / (frames - 1), speed the mean
        np.testing.assert_allclose(np.linalg.norm(steps, axis=1), speed * (2 * np.arange(5) + 1) / 5)
        headings = np.degrees(np.arctan2(-steps[:, 1], steps[:, 0])) % 360
        np.testing.assert_allclose(headings, 45 * label, atol=1e-6)
        assert (centres - radius >= -1e-9).all() and (centres + radius <= 32 + 1e-9).all()


def step_lengths(boxes) -> np.ndarray:
    """[frames - 1] how far the box centre moves from each frame to the next, in pixels."""
    return np.linalg.norm(np.diff(box_centres(boxes), axis=0), axis=1)


def test_accelerating_boxes_speed_up_forward_and_slow_down_reversed(arrow_clips):
    split = load_clips("moving_shapes", arrow_clips["accelerating"], "train", frames=ARROW["frames"])
    backwards = clip_view(split, "reversed")
    time = np.arange(ARROW["frames"] - 1)
    for i in range(len(split)):
        forward, reverse = step_lengths(split.boxes(i)), step_lengths(backwards.boxes(i))
        # boxes are whole pixels, so single steps jitter; the trend over the clip and its two ends do not
        assert np.polyfit(time, forward, 1)[0] > 0 and forward[-1] > forward[0], (split.clip_id(i), forward)
        assert np.polyfit(time, reverse, 1)[0] < 0 and reverse[-1] < reverse[0], (split.clip_id(i), reverse)


def test_accelerating_clips_follow_the_constant_clips_paths(arrow_clips):
    """The same draws: the same shapes from the same start to the same end, only the timing differs."""
    constant, accelerating = (annotations(arrow_clips[m])["clips"] for m in ("constant", "accelerating"))
    for still, sped in zip(constant, accelerating):
        assert {k: still[k] for k in ("label", "shape", "radius", "speed")} == \
               {k: sped[k] for k in ("label", "shape", "radius", "speed")}
        np.testing.assert_allclose(np.asarray(sped["centres"])[[0, -1]], np.asarray(still["centres"])[[0, -1]])
        assert sped["centres"][1:-1] != still["centres"][1:-1]


def test_record_names_motion_only_when_not_constant(clips, arrow_clips):
    for root in (clips, arrow_clips["constant"]):
        assert "motion" not in json.loads((root / "dataset.json").read_text())
        assert "motion" not in annotations(root)
    assert json.loads((arrow_clips["accelerating"] / "dataset.json").read_text())["motion"] == "accelerating"
    assert annotations(arrow_clips["accelerating"], "test")["motion"] == "accelerating"
    with pytest.raises(SpatialProbeError, match="unknown motion 'wobbly'; choose from constant, accelerating"):
        generate_moving_shapes(clips.parent / "wobbly", **SMALL, motion="wobbly")
    assert not (clips.parent / "wobbly").exists()  # refused before anything is written


def pixel_views(root, split: str):
    """The pixels control's tokens of the split's forward and reversed views: one token per frame (the
    whole frame, at 8 px), so the linear probe, which pools the tokens of each frame, still sees where the
    shape is (8-px patches of 32-px frames, pooled per frame, fold the frame onto one patch and lose that:
    then the probe's interval on accelerating clips reaches below 0.5 for some seeds)."""
    clips = load_clips("moving_shapes", root, split, frames=ARROW["frames"])
    backbone = load_backbone("pixels", "pixels", resolution=8, patch_size=8)
    return [backbone.extract([view.load_clip(i) for i in range(len(view))])["vision.embed"]
            for view in (clip_view(clips, "forward"), clip_view(clips, "reversed"))]


@pytest.mark.parametrize("motion", ["accelerating", "constant"])
def test_pixels_read_the_arrow_of_time_only_when_the_shape_accelerates(arrow_clips, motion):
    """Known answer: accelerating, the shape is near an edge early in a clip and near the middle late in its
    reverse, which a linear probe on frames reads; at constant speed a reversed clip is just as likely a
    forward clip of the opposite direction, so ordering is at chance whatever reads it."""
    (train_forward, train_reversed), (test_forward, test_reversed) = (
        pixel_views(arrow_clips[motion], split) for split in ("train", "test"))
    score = probe_ordering(train_forward, train_reversed, test_forward, test_reversed, probe="linear").score
    if motion == "accelerating":
        assert score.low > 0.5, score
    else:
        assert score.low <= 0.5 <= score.high, score


def test_speed_and_start_vary(clips):
    data = annotations(clips)
    assert np.std([c["speed"] for c in data["clips"]]) > 0.5
    assert len({tuple(np.round(c["centres"][0], 1)) for c in data["clips"]}) == len(data["clips"])


def test_masks_boxes_and_pixels_agree(clips):
    data = annotations(clips)
    for clip in data["clips"][:6]:
        for t in range(data["frames"]):
            mask = mask_utils.decode(clip["masks"][t]).astype(bool)
            x, y, w, h = mask_box(mask)
            assert clip["boxes"][t] == [x, y, x + w, y + h]
            pixels = np.asarray(Image.open(clips / "train" / clip["file"] / f"{t:03d}.png"))
            colour = pixels[mask][0]
            assert (pixels[mask] == colour).all()
            assert not (pixels[~mask] == colour).all(axis=1).any()  # the easy background is dark, the shape bright
            # whole inside the frame: the mask keeps its size while it moves (sub-pixel steps change a few pixels)
            assert abs(mask.sum() - mask_utils.area(clip["masks"][0])) <= 0.35 * mask_utils.area(clip["masks"][0])


def test_same_seed_same_files_other_seed_other_files(clips, webm_clips, tmp_path):
    assert files_of(generate_moving_shapes(tmp_path / "again", **SMALL)) == files_of(clips)
    assert files_of(generate_moving_shapes(tmp_path / "again-webm", **{**SMALL, "n_train": 4},
                                           video_format="webm")) == files_of(webm_clips)
    other = files_of(generate_moving_shapes(tmp_path / "other", **SMALL, seed=1))
    assert other["train/annotations.json"] != files_of(clips)["train/annotations.json"]


def test_more_test_clips_leave_train_clips_alone(clips, tmp_path):
    more = generate_moving_shapes(tmp_path / "more", **{**SMALL, "n_test": 3})
    old, new = files_of(clips), files_of(more)
    train_files = [{k: v for k, v in files.items() if k.startswith("train/")} for files in (old, new)]
    assert train_files[0] == train_files[1] and len(train_files[0]) > 1
    assert annotations(more, "test")["clips"][:2] == annotations(clips, "test")["clips"]


def test_loader_samples_frames_and_boxes_together(clips):
    split = load_clips("moving_shapes", clips, "train", frames=2)
    clip = annotations(clips)["clips"][0]
    frames = split.load_clip(0)
    assert len(frames) == 2 and frames[0].mode == "RGB" and frames[0].size == (32, 32)
    # 2 of 4 frames: the centres of the two halves, frames 1 and 3
    for got, t in zip(frames, (1, 3)):
        assert np.array_equal(np.asarray(got), np.asarray(Image.open(clips / "train" / clip["file"] / f"{t:03d}.png")))
    np.testing.assert_array_equal(split.boxes(0), np.asarray(clip["boxes"])[[1, 3]])
    assert split.masks(0).shape == (2, 32, 32)
    assert split.label(0) == clip["label"] and split.clip_id(0) == clip["id"]
    assert split.load_image(0)[1].tobytes() == frames[1].tobytes()
    assert sum(c["clips"] for c in split.classes_used) == len(split) == SMALL["n_train"]


def test_webm_clips_read_back_close_to_the_drawn_shape(webm_clips):
    split = load_clips("moving_shapes", webm_clips, "train", frames=4)
    for i in range(len(split)):
        frames, masks = split.load_clip(i), split.masks(i)
        assert len(frames) == 4
        for frame, mask in zip(frames, masks):
            bright = np.asarray(frame).astype(int).sum(axis=2) > 3 * 128  # lossy, but bright on dark survives
            assert (bright & mask).sum() >= 0.8 * mask.sum() and (bright & ~mask).sum() <= 0.2 * mask.sum()


def test_too_few_frames_or_wrong_count_is_named(clips, webm_clips, tmp_path):
    with pytest.raises(SpatialProbeError) as err:
        load_clips("moving_shapes", clips, "train", frames=5)
    assert "train_00000" in str(err.value) and "fewer than the 5" in str(err.value) and "\n" not in str(err.value)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(webm_clips, copy)
    short = copy / "train" / "clips" / "train_00001.webm"
    write_webm(short, [np.zeros((32, 32, 3), np.uint8)] * 3, webm_codec())
    with pytest.raises(SpatialProbeError, match=r"train_00001\.webm has 3 frames where .*annotations\.json records 4"):
        load_clips("moving_shapes", copy, "train", frames=4)
    with pytest.warns(UserWarning, match="1 bad videos left out"):
        split = load_clips("moving_shapes", copy, "train", frames=4, on_bad_video="skip")
    assert split.skipped == 1 and len(split) == 3 and "train_00001" not in [split.clip_id(i) for i in range(3)]
    assert clips_hash(copy, split) != clips_hash(webm_clips, load_clips("moving_shapes", webm_clips, "train", frames=4))


def test_cli_writes_refuses_other_content_and_reuses(tmp_path):
    out = tmp_path / "cli"
    args = ["data", "moving-shapes", "--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1",
            "--frames", "3", "--size", "32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "content hash" in result.output and len(list((out / "train" / "clips").iterdir())) == 2
    before = files_of(out)
    assert CliRunner().invoke(app, args).exit_code == 0 and files_of(out) == before  # same parameters: reused
    other = CliRunner().invoke(app, [*args[:-2], "--size", "48"])
    assert other.exit_code == 2 and "other parameters" in other.output and files_of(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(app, ["data", "moving-shapes", "--out", str(foreign), "--n-train", "1"])
    assert refused.exit_code == 2 and "not a moving_shapes dataset" in refused.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    bad = CliRunner().invoke(app, ["data", "moving-shapes", "--out", str(tmp_path / "b"), "--format", "gif"])
    assert bad.exit_code == 2 and "unknown format 'gif'" in bad.output


def test_cli_motion_option(tmp_path):
    args = ["data", "moving-shapes", "--n-train", "2", "--n-val", "0", "--n-test", "0", "--frames", "3", "--size", "32"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "fast"), "--motion", "accelerating"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "fast" / "dataset.json").read_text())["motion"] == "accelerating"
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--motion", "wobbly"])
    assert bad.exit_code == 2 and "unknown motion 'wobbly'" in bad.output and not (tmp_path / "bad").exists()
