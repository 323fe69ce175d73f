"""The planted-patch self-check (`spatialprobe verify`): it passes at every stage of every tiny family, and it
fails, in one line naming the model, the stage and the transformers version, when an adapter's token order is
wrong."""
import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

import spatialprobe as sp
from spatialprobe.models import FAMILIES
from spatialprobe.models.dinov2 import Dinov2Backbone
from spatialprobe.models.qwen2_5_vl import Qwen25VLBackbone
from spatialprobe.cli import app
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.testing import save_tiny
from spatialprobe.verify import (Square, VerifyFailed, check_stage, raise_if_failed, verify_report,
                                 verify_stages)

#: case -> (family, options): small resolutions, as in each family's own tests, and every token layout kind:
#: plain grids, 2x2 mergers, base tile + mosaic (and its padded form), tiles + thumbnail, several grids in one
#: stage, ResNet maps at their own strides, placeless queries
CASES = {
    "dinov2": ("dinov2", {"resolution": 56}),
    "clip": ("clip", {"resolution": 56}),
    "siglip": ("siglip", {"resolution": 56}),
    "qwen2_5_vl": ("qwen2_5_vl", {}),  # 224 px: 2x2 attention windows, so the window order matters
    "glm4v": ("glm4v", {"resolution": 112}),
    "llava_next": ("llava_next", {}),
    "llava_next padded": ("llava_next", {"resolution": 56}),
    "llava_next_video": ("llava_next_video", {}),
    "llava_onevision": ("llava_onevision", {}),
    "internvl": ("internvl", {"resolution": 56}),
    "owlvit": ("owlvit", {}),
    "owlv2": ("owlv2", {}),
    "detr": ("detr", {"resolution": 128}),
    "grounding_dino": ("grounding_dino", {"resolution": 128}),
    "florence2": ("florence2", {"resolution": 128}),
    "kosmos2": ("kosmos2", {}),
    "vjepa2": ("vjepa2", {}),
    "ltx_video_vae": ("ltx_video_vae", {"resolution": 128}),
    "pixels": ("pixels", {"resolution": 56}),
    "hybrid": ("hybrid", {}),
}
#: stages whose tokens have no place in the image: nothing to check there
PLACELESS = {"kosmos2": {"projector.out", "llm.layer.0", "llm.layer.1"}}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """Each family's tiny checkpoint, built once for the module."""
    built = {}

    def path(family):
        if family not in built:
            built[family] = str(save_tiny(family, tmp_path_factory.mktemp(family)))
        return built[family]

    return path


def load_case(case, tiny_path):
    family, options = CASES[case]
    if family == "pixels":
        return sp.load_backbone("pixels", "pixels", **options)
    if family == "hybrid":
        parts = [{"name": "spatial", "family": "pixels", "path": "pixels", "stage": "vision.embed",
                  "options": {"resolution": 112}},
                 {"name": "semantic", "family": "dinov2", "path": tiny_path("dinov2"), "stage": "vision.block.-1",
                  "options": {"resolution": 56}}]
        return sp.load_backbone("hybrid", "pixels+dino", parts=parts)
    return sp.load_backbone(family, tiny_path(family), **options)


def test_every_family_has_a_case():
    # cogvlm2 and cogvlm2_video have no tiny checkpoint: cogvlm2's real model is checked below when a snapshot is
    # named; cogvlm2_video reads clips only, which this still-image check cannot plant (its planted-patch-in-time
    # test is in tests/test_cogvlm2_video.py, with $SPATIALPROBE_COGVLM2_VIDEO_PATH)
    assert {family for family, _ in CASES.values()} | {"cogvlm2", "cogvlm2_video"} == set(FAMILIES)


@pytest.mark.parametrize("case", CASES)
def test_passes_at_every_stage_of_every_tiny_family(case, tiny_path):
    backbone = load_case(case, tiny_path)
    checks = verify_stages(backbone)
    assert [c.stage for c in checks] == backbone.stages
    failed = [(c.stage, c.detail) for c in checks if not c.passed]
    assert not failed, failed
    # every stage with placed tokens was really checked, not skipped
    assert {c.stage for c in checks if c.skipped} == PLACELESS.get(case, set())


def reading_reversed(to_features):
    """An adapter's `to_features` that reads the tokens in reverse order but keeps the raster footprints."""
    def reversed_to_features(self, stage, raw, layout):
        right = to_features(self, stage, raw, layout)
        return right.with_tokens(right.tokens.flip(1))

    return reversed_to_features


class ReversedDinov2(Dinov2Backbone):
    to_features = reading_reversed(Dinov2Backbone.to_features)


class WindowOrderKept(Qwen25VLBackbone):
    """An adapter that no longer undoes Qwen2.5-VL's window order (what a changed transformers could do)."""

    def _in_group_order(self, stage, raw, layout):
        return raw


def test_fails_in_one_line_on_a_reversed_token_order(tiny_path):
    backbone = ReversedDinov2(tiny_path("dinov2"), resolution=56)
    checks = verify_stages(backbone)
    assert [c.passed for c in checks] == [False] * 3
    with pytest.raises(VerifyFailed) as caught:
        raise_if_failed(backbone, checks, name="my-dino")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("verify: dinov2 model 'my-dino' fails the planted-patch check at vision.embed (+2 more) "
                              f"under transformers {transformers.__version__}:")
    assert isinstance(caught.value, sp.SpatialProbeError)


def test_names_exactly_the_stages_whose_order_is_wrong(tiny_path):
    backbone = WindowOrderKept(tiny_path("qwen2_5_vl"))
    failed = [c.stage for c in verify_stages(backbone) if not c.passed]
    # the patch embedding comes before the window permutation, and the LLM gets the tokens back in raster order
    assert failed == [s for s in backbone.stages if s.startswith("vision.block.")] + ["projector.out"]


def test_report_for_the_manifest(tiny_path):
    backbone = load_case("kosmos2", tiny_path)
    report = verify_report(backbone, verify_stages(backbone))
    assert json.loads(json.dumps(report)) == report
    assert report["family"] == "kosmos2" and report["path"] == backbone.name_or_path and report["passed"] is True
    assert report["versions"]["transformers"] == transformers.__version__
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["spatialprobe"] == sp.__version__
    statuses = {stage: entry["status"] for stage, entry in report["stages"].items()}
    assert statuses == {"vision.embed": "pass", "vision.block.0": "pass", "vision.block.1": "pass",
                        "projector.out": "skipped", "llm.layer.0": "skipped", "llm.layer.1": "skipped"}
    wrong = ReversedDinov2(tiny_path("dinov2"), resolution=56)
    report = verify_report(wrong, verify_stages(wrong, ["vision.block.-1"]))
    assert report["passed"] is False and report["stages"] == {"vision.block.1": report["stages"]["vision.block.1"]}
    assert report["stages"]["vision.block.1"]["status"] == "fail"


# --- the rule itself, on hand-made features ------------------------------------------------------------------
SQUARES = [Square((0.75, 0.0, 1.0, 0.25), "top-right"), Square((0.0, 0.75, 0.25, 1.0), "bottom-left")]


def features_changed_at(indices, side=4):
    """A [2, side*side] raster whose tokens are zero except a 1 at `indices[image]`."""
    tokens = torch.zeros(2, side * side, 3)
    for image, index in enumerate(indices):
        tokens[image, index] = 1.0
    return TokenFeatures(tokens, grid_footprints(side, side).expand(2, -1, -1).contiguous(), (side, side))


def plain_features(side=4):
    return features_changed_at([], side)


def test_rule_passes_when_the_peak_is_in_the_square():
    assert check_stage("s", features_changed_at([3, 12]), plain_features(), SQUARES).passed


@pytest.mark.parametrize("indices, reason", [
    ([12, 12], "does not overlap"),  # image 0 peaks in the other corner (a transposed or reversed grid)
    ([3, 0], "does not overlap"),  # image 1 peaks in the top-left corner (a flipped grid)
])
def test_rule_fails_when_the_peak_is_elsewhere(indices, reason):
    check = check_stage("s", features_changed_at(indices), plain_features(), SQUARES)
    assert not check.passed and reason in check.detail


def test_rule_fails_when_nothing_changes():
    check = check_stage("s", plain_features(), plain_features(), SQUARES)
    assert not check.passed and "changes no token" in check.detail


def test_rule_wants_the_peak_on_the_planted_side():
    # a wide token that reaches into the square but is centred in the other half of the image
    footprints = torch.tensor([[0.0, 0.0, 0.9, 0.25], [0.0, 0.25, 1.0, 1.0]]).expand(2, -1, -1).contiguous()
    tokens = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])
    marked, plain = TokenFeatures(tokens, footprints), TokenFeatures(torch.zeros(2, 2, 1), footprints)
    check = check_stage("s", marked, plain, SQUARES)
    assert not check.passed and "outside the top-right quarter" in check.detail


def test_a_single_token_for_the_whole_image_is_skipped_not_passed_silently():
    backbone = sp.load_backbone("pixels", "pixels", resolution=56, patch_size=56)
    [check] = verify_stages(backbone)
    assert check.skipped and "too coarse" in check.detail


# --- the command --------------------------------------------------------------------------------------------
def test_command_passes_on_a_tiny_family():
    result = CliRunner().invoke(app, ["verify", "dinov2", "tiny", "--option", "resolution=56"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["pass", "vision.embed"], ["pass", "vision.block.0"],
                                                       ["pass", "vision.block.1"]]
    assert "every checked stage passes" in lines[-1]


def test_command_fails_in_one_line_with_exit_code_1(monkeypatch):
    monkeypatch.setattr(Dinov2Backbone, "to_features", reading_reversed(Dinov2Backbone.to_features))
    result = CliRunner().invoke(app, ["verify", "dinov2", "tiny", "--stage", "vision.block.-1",
                                      "--option", "resolution=56"])
    assert result.exit_code == 1, result.output
    # the error is the last line, and the only one (above it: the loaders' progress bars)
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    expected = (f"error: verify: dinov2 model 'tiny' fails the planted-patch check at vision.block.1 under "
                f"transformers {transformers.__version__}")
    assert result.stderr.count("error:") == 1 and last.startswith(expected), result.stderr
    assert result.stdout.split()[:2] == ["fail", "vision.block.1"]


def test_command_names_a_misspelled_option_before_loading():
    result = CliRunner().invoke(app, ["verify", "dinov2", "tiny", "--option", "resolutoin=56"])
    assert result.exit_code == 2 and "resolutoin" in result.output and "did you mean 'resolution'" in result.output


# --- real remote-code checkpoints, only when a snapshot is named (as in their own tests) -------------------
@pytest.mark.skipif(not os.environ.get("SPATIALPROBE_COGVLM2_PATH"),
                    reason="runs only when $SPATIALPROBE_COGVLM2_PATH names a local snapshot folder of "
                           "THUDM/cogvlm2-llama3-chat-19B")
def test_passes_on_the_real_cogvlm2():
    path = os.environ["SPATIALPROBE_COGVLM2_PATH"]
    assert Path(path).is_dir(), f"$SPATIALPROBE_COGVLM2_PATH={path!r} is not a folder"
    device = os.environ.get("SPATIALPROBE_COGVLM2_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    backbone = sp.load_backbone("cogvlm2", path, device=device, dtype="bfloat16", trust_remote_code=True)
    checks = verify_stages(backbone)
    assert all(c.passed for c in checks), [(c.stage, c.detail) for c in checks if not c.passed]


@pytest.mark.skipif(not os.environ.get("SPATIALPROBE_INTERNVL2_PATH"),
                    reason="set SPATIALPROBE_INTERNVL2_PATH to a local snapshot folder of an original InternVL2 "
                           "checkpoint (e.g. OpenGVLab/InternVL2-1B) to test the remote-code path")
def test_passes_on_a_remote_code_internvl2():
    backbone = sp.load_backbone("internvl", os.environ["SPATIALPROBE_INTERNVL2_PATH"], trust_remote_code=True)
    checks = verify_stages(backbone)
    assert all(c.passed for c in checks), [(c.stage, c.detail) for c in checks if not c.passed]
