"""The Something-Something v2 loader on a small set of real-format clips: WebM videos written with PyAV,
labels.json and train/validation.json as the official download has them."""
import json

import numpy as np
import pytest

from spatialprobe.data import clips_hash, load_clips
from spatialprobe.data.moving_shapes import webm_codec, write_webm
from spatialprobe.errors import SpatialProbeError

SIZE, LENGTH = 32, 10
CLASSES = ["Holding something", "Moving something down", "Moving something up",
           "Pushing something from left to right", "Pushing something from right to left"]
STEP = {"Pushing [something] from left to right": (2, 0), "Pushing [something] from right to left": (-2, 0),
        "Moving [something] up": (0, -2), "Moving [something] down": (0, 2), "Holding [something]": (0, 0)}
TRAIN = [("1", "Pushing [something] from left to right"), ("2", "Pushing [something] from right to left"),
         ("3", "Moving [something] up"), ("4", "Moving [something] down"), ("5", "Holding [something]"),
         ("6", "Pushing [something] from left to right"), ("7", "Pushing [something] from right to left")]
VALIDATION = [("20", "Moving [something] down"), ("21", "Pushing [something] from left to right"),
              ("22", "Holding [something]")]


def square_clip(step, frames=LENGTH):
    """A bright 8-pixel square on black, moving `step` pixels per frame from the middle."""
    clip = []
    for t in range(frames):
        x, y = 12 + step[0] * (t - frames // 2), 12 + step[1] * (t - frames // 2)
        pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
        pixels[max(y, 0):y + 8, max(x, 0):x + 8] = 240
        clip.append(pixels)
    return clip


def entries(rows):
    return [{"id": clip_id, "label": template.replace("[something]", "a cup"), "template": template,
             "placeholders": ["a cup"]} for clip_id, template in rows]


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    (root / "labels").mkdir()
    (root / "labels" / "labels.json").write_text(json.dumps({name: str(i) for i, name in enumerate(CLASSES)}))
    (root / "labels" / "train.json").write_text(json.dumps(entries(TRAIN)))
    (root / "labels" / "validation.json").write_text(json.dumps(entries(VALIDATION)))
    videos = root / "20bn-something-something-v2"
    videos.mkdir()
    codec = webm_codec()
    for clip_id, template in TRAIN + VALIDATION:
        write_webm(videos / f"{clip_id}.webm", square_clip(STEP[template]), codec)
    return root


def square_centre(frame):
    ys, xs = np.nonzero(np.asarray(frame).astype(int).sum(axis=2) > 3 * 128)
    return np.array([xs.mean(), ys.mean()])


def load(root, split="train", **options):
    # val_fraction 1e-9: no train clip is held out for val, so train reads all of train.json
    return load_clips("ssv2", root, split, frames=4, **{"val_fraction": 1e-9, **options})


def test_reads_the_direction_subset_with_frames_in_time_order(ssv2):
    split = load(ssv2)
    assert split.labels == ["right", "left", "up", "down"]
    assert [split.clip_id(i) for i in range(len(split))] == ["1", "2", "3", "4", "6", "7"]  # "Holding" left out
    assert [split.labels[split.label(i)] for i in range(len(split))] == ["right", "left", "up", "down", "right", "left"]
    for i in range(len(split)):
        frames = split.load_clip(i)
        assert len(frames) == 4 and all(f.mode == "RGB" and f.size == (SIZE, SIZE) for f in frames)
        shift = square_centre(frames[-1]) - square_centre(frames[0])
        expected = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}[split.labels[split.label(i)]]
        assert np.array_equal(np.sign(np.round(shift)), expected), (split.clip_id(i), shift)
        assert split.boxes(i) is None
    assert split.skipped == 0
    assert {(c["label"], c["source"], c["clips"]) for c in split.classes_used} == {
        ("right", "Pushing something from left to right", 2), ("left", "Pushing something from right to left", 2),
        ("up", "Moving something up", 1), ("down", "Moving something down", 1)}


def test_frames_are_sampled_uniformly_over_the_video(ssv2):
    split = load(ssv2, directions={"right": ["Pushing [something] from left to right"]})
    centres = [square_centre(f)[0] for f in split.load_clip(0)]
    # 4 of 10 frames: 1, 3, 6 and 8; the square starts at x = 12 - 2 * 5 and moves 2 px a frame
    assert centres == pytest.approx([2 + 2 * t + 3.5 for t in (1, 3, 6, 8)])


def test_test_reads_validation_and_val_is_held_out_of_train(ssv2):
    test = load(ssv2, "test")
    assert [test.clip_id(i) for i in range(len(test))] == ["20", "21"]
    train = load_clips("ssv2", ssv2, "train", frames=4, val_fraction=0.5)
    val = load_clips("ssv2", ssv2, "val", frames=4, val_fraction=0.5)
    train_ids, val_ids = ({s.clip_id(i) for i in range(len(s))} for s in (train, val))
    assert not train_ids & val_ids and train_ids | val_ids == {"1", "2", "3", "4", "6", "7"}


def test_custom_subset_templates_match_without_brackets_and_unknown_ones_are_named(ssv2):
    split = load(ssv2, directions={"toward": ["pushing something from LEFT to right"], "still": "Holding [something]"})
    assert split.labels == ["toward", "still"] and len(split) == 3
    with pytest.raises(SpatialProbeError) as err:
        load(ssv2, directions={"up": ["Lifting [something] up"]})
    assert "labels.json" in str(err.value) and "'Lifting [something] up'" in str(err.value)
    assert "\n" not in str(err.value)
    capped = load(ssv2, clips_per_label=1)
    assert [capped.clip_id(i) for i in range(len(capped))] == ["1", "2", "3", "4"]


@pytest.fixture
def damaged(ssv2, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(ssv2, root)
    video = root / "20bn-something-something-v2" / "3.webm"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # truncated: a partial download
    return root, video


def test_a_corrupt_video_is_named_in_one_line_or_skipped_with_a_count(damaged):
    root, video = damaged
    with pytest.raises(SpatialProbeError) as err:
        load(root)
    message = str(err.value)
    assert str(video) in message and "\n" not in message and message.startswith("cannot read video")
    with pytest.warns(UserWarning, match="1 bad videos left out"):
        split = load(root, on_bad_video="skip")
    assert split.skipped == 1 and [split.clip_id(i) for i in range(len(split))] == ["1", "2", "4", "6", "7"]
    assert {c["label"]: c["clips"] for c in split.classes_used}["up"] == 0


def test_missing_and_too_short_videos_are_named(ssv2, tmp_path):
    import shutil

    root = tmp_path / "short"
    shutil.copytree(ssv2, root)
    (root / "20bn-something-something-v2" / "1.webm").unlink()
    with pytest.raises(SpatialProbeError, match=r"video file not found: .*1\.webm$"):
        load(root)
    short = root / "20bn-something-something-v2" / "1.webm"
    write_webm(short, square_clip((2, 0), frames=3), webm_codec())
    with pytest.raises(SpatialProbeError, match=r"video .*1\.webm has 3 frames, fewer than the 4 asked for"):
        load(root)


def test_hash_follows_the_videos_read_and_the_subset(ssv2, damaged):
    full, right_only = load(ssv2), load(ssv2, directions={"right": ["Pushing [something] from left to right"]})
    assert clips_hash(ssv2, full) == clips_hash(ssv2, load(ssv2))
    assert clips_hash(ssv2, full) != clips_hash(ssv2, right_only)
    root, _ = damaged
    with pytest.warns(UserWarning, match="1 bad videos left out"):
        skipping = load(root, on_bad_video="skip")
    assert clips_hash(root, skipping) != clips_hash(ssv2, full)
