"""Any folder of videos with a labels.csv; the shared clip machinery (frame sampling, load_clips, clips_hash)."""
import shutil

import numpy as np
import pytest

from spatialprobe.data import clips_hash, load_clips
from spatialprobe.data.moving_shapes import webm_codec, write_webm
from spatialprobe.data.video import FOLDER_SPLIT_FRACTIONS, clip_view, folder_split_of, sample_indices
from spatialprobe.errors import SpatialProbeError


def grey_clip(level, frames=6):
    """Frames whose brightness encodes the label (level) and the frame index (+ 10 per frame)."""
    return [np.full((32, 32, 3), level + 10 * t, np.uint8) for t in range(frames)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    codec = webm_codec()
    rows = [("clips/a.webm", "wave", "train", 40), ("clips/b.webm", "clap", "train", 120),
            ("clips/c.webm", "wave", "test", 40), ("clips/d.webm", "clap", "val", 120)]
    for file, _label, _split, level in rows:
        write_webm(root / file, grey_clip(level), codec)
    (root / "labels.csv").write_text("file,label,split\n" + "".join(f"{f},{lab},{s}\n" for f, lab, s, _ in rows))
    return root


def brightness(frame):
    return float(np.asarray(frame).mean())


def test_sample_indices_spread_uniformly():
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(5, 5) == [0, 1, 2, 3, 4]
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]


def test_reads_each_split_with_labels_shared_across_splits(folder):
    train, test = load_clips("folder", folder, "train", frames=3), load_clips("folder", folder, "test", frames=3)
    assert train.labels == test.labels == ["clap", "wave"]
    assert [(train.clip_id(i), train.labels[train.label(i)]) for i in range(len(train))] == [
        ("clips/a.webm", "wave"), ("clips/b.webm", "clap")]
    assert [test.clip_id(i) for i in range(len(test))] == ["clips/c.webm"]
    frames = train.load_clip(1)
    assert len(frames) == 3 and frames[0].size == (32, 32)
    # 3 of 6 frames: 1, 3 and 5, each 10 levels brighter per frame (lossy: within 3 levels)
    assert [brightness(f) for f in frames] == pytest.approx([130, 150, 170], abs=3)
    assert train.boxes(0) is None and train.masks(0) is None


def test_without_a_split_column_clips_split_by_a_stable_hash(tmp_path, folder):
    root = tmp_path / "nosplit"
    shutil.copytree(folder, root)
    names = [f"clips/{n}.webm" for n in "abcd"]
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{n},x\n" for n in names))
    assigned = {}
    for split in FOLDER_SPLIT_FRACTIONS:
        expected = [n for n in names if folder_split_of(n) == split]
        if not expected:
            with pytest.raises(SpatialProbeError, match=f"no clip in split '{split}'"):
                load_clips("folder", root, split, frames=2)
            continue
        loaded = load_clips("folder", root, split, frames=2)
        assigned[split] = [loaded.clip_id(i) for i in range(len(loaded))]
        assert assigned[split] == expected
    assert sorted(sum(assigned.values(), [])) == names
    points = [folder_split_of(f"clip{i}.mp4") for i in range(2000)]
    assert points.count("train") / 2000 == pytest.approx(0.7, abs=0.05)


def test_csv_and_video_problems_are_named_in_one_line(tmp_path, folder):
    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    (root / "labels.csv").write_text("path,label\nclips/a.webm,wave\n")
    with pytest.raises(SpatialProbeError, match=r"labels\.csv: missing column 'file'"):
        load_clips("folder", root, "train")
    (root / "labels.csv").write_text("file,label,split\nclips/a.webm,wave,train\nclips/gone.webm,clap,train\n"
                                     "clips/b.webm,clap,holdout\n")
    with pytest.raises(SpatialProbeError, match=r"row 4 split 'holdout'"):
        load_clips("folder", root, "train")
    (root / "labels.csv").write_text("file,label,split\nclips/a.webm,wave,train\nclips/gone.webm,clap,train\n")
    with pytest.raises(SpatialProbeError, match=r"^video file not found: .*gone\.webm$"):
        load_clips("folder", root, "train", frames=2)
    with pytest.warns(UserWarning, match="1 bad videos left out"):
        split = load_clips("folder", root, "train", frames=2, on_bad_video="skip")
    assert split.skipped == 1 and len(split) == 1 and split.problems[0].startswith("video file not found")


def test_load_clips_checks_its_arguments_first(folder, tmp_path):
    for kwargs, message in [({"kind": "youtube"}, "clip dataset kind 'youtube'"),
                            ({"on_bad_video": "ignore"}, "on_bad_video: 'ignore'"),
                            ({"frames": 0}, "frames: 0"), ({"split": "dev"}, "split 'dev'"),
                            ({"root": tmp_path / "none"}, "dataset folder not found")]:
        args = {"kind": "folder", "root": folder, "split": "train", **kwargs}
        with pytest.raises(SpatialProbeError, match=message):
            load_clips(args.pop("kind"), args.pop("root"), args.pop("split"), **args)


def train_hash(root):
    return clips_hash(root, load_clips("folder", root, "train", frames=3))


def test_hash_follows_content_not_location(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert clips_hash(copy) == clips_hash(folder) and train_hash(copy) == train_hash(folder)
    write_webm(copy / "clips" / "a.webm", grey_clip(60), webm_codec())
    assert clips_hash(copy) != clips_hash(folder) and train_hash(copy) != train_hash(folder)
    # a clip of another split changes the whole-folder hash only
    write_webm(copy / "clips" / "a.webm", grey_clip(40), webm_codec())
    write_webm(copy / "clips" / "c.webm", grey_clip(60), webm_codec())
    assert clips_hash(copy) != clips_hash(folder) and train_hash(copy) == train_hash(folder)


def test_views_reorder_frames_and_boxes_and_change_the_hash(folder):
    split = load_clips("folder", folder, "train", frames=6)
    levels = [round((brightness(f) - 120) / 10) for f in split.load_clip(1)]
    assert levels == [0, 1, 2, 3, 4, 5]
    assert clip_view(split, "forward") is split
    reversed_, repeated = clip_view(split, "reversed"), clip_view(split, "repeated")
    assert [round((brightness(f) - 120) / 10) for f in reversed_.load_clip(1)] == [5, 4, 3, 2, 1, 0]
    assert [round((brightness(f) - 120) / 10) for f in repeated.load_image(1)] == [3] * 6
    shuffled = clip_view(split, "shuffled", seed=0)
    order = shuffled.frame_order(1)
    assert sorted(order) == list(range(6)) and order != list(range(6))
    assert [round((brightness(f) - 120) / 10) for f in shuffled.load_clip(1)] == order
    assert clip_view(split, "shuffled", seed=0).frame_order(1) == order  # seeded
    assert {tuple(clip_view(split, "shuffled", seed=s).frame_order(1)) for s in range(5)} != {tuple(order)}
    assert reversed_.label(1) == split.label(1) and len(reversed_) == len(split)
    hashes = {clips_hash(folder, view) for view in (split, reversed_, repeated, shuffled)}
    assert len(hashes) == 4
    with pytest.raises(SpatialProbeError, match="clip view 'sideways'"):
        clip_view(split, "sideways")


def test_views_reorder_boxes_with_frames(tmp_path):
    from spatialprobe.data.moving_shapes import generate_moving_shapes

    root = generate_moving_shapes(tmp_path / "m", n_train=1, n_val=0, n_test=0, frames=4, image_size=32)
    split = load_clips("moving_shapes", root, "train", frames=4)
    np.testing.assert_array_equal(clip_view(split, "reversed").boxes(0), split.boxes(0)[::-1])
    np.testing.assert_array_equal(clip_view(split, "repeated").masks(0), split.masks(0)[[2, 2, 2, 2]])
