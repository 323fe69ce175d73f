"""The layout helpers the adapters share (models/layout.py), on hand-made inputs with known answers."""
import pytest
import torch

from spatialprobe.errors import SpatialProbeError
from spatialprobe.models.layout import (batch_grid_footprints, check_multiple, gather_tokens, grid_features,
                                        group_order_to_raster, standard_stages, token_positions)


def test_standard_stages_names_in_model_order():
    embed, down, out = torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity()
    blocks, llm = [torch.nn.Identity(), torch.nn.Identity()], [torch.nn.Identity()]
    stages = standard_stages(embed, blocks, {"downsample": down, "out": out}, llm)
    assert list(stages) == ["vision.embed", "vision.block.0", "vision.block.1", "projector.downsample",
                            "projector.out", "llm.layer.0"]
    assert stages["vision.embed"] is embed and stages["vision.block.1"] is blocks[1]
    assert stages["projector.downsample"] is down and stages["llm.layer.0"] is llm[0]


def test_standard_stages_of_a_tower_alone():
    assert list(standard_stages(torch.nn.Identity(), [torch.nn.Identity()])) == ["vision.embed", "vision.block.0"]


def test_token_positions_per_row():
    mask = torch.tensor([[False, True, True, False], [True, False, False, True]])
    assert token_positions(mask).tolist() == [[1, 2], [0, 3]]


def test_gather_tokens_at_positions():
    raw = torch.arange(2 * 4 * 2).reshape(2, 4, 2)  # token t of image b holds [8b + 2t, 8b + 2t + 1]
    got = gather_tokens(raw, torch.tensor([[1, 2], [0, 3]]))
    assert got.tolist() == [[[2, 3], [4, 5]], [[8, 9], [14, 15]]]


def test_group_order_to_raster_with_3x3_groups():
    # a 6x6 grid in 3x3 groups: raster row 0 is group 0's first row, then group 1's first row
    index = group_order_to_raster(6, 3).reshape(6, 6)
    assert index[0].tolist() == [0, 1, 2, 9, 10, 11]
    assert index[1].tolist() == [3, 4, 5, 12, 13, 14]
    assert index[3].tolist() == [18, 19, 20, 27, 28, 29]
    assert sorted(index.flatten().tolist()) == list(range(36))


def test_check_multiple_names_family_value_unit_and_reason():
    check_multiple("qwen2_5_vl", 224, 28, "patch size x merge size")  # a multiple: no error
    with pytest.raises(SpatialProbeError, match=r"^qwen2_5_vl: resolution 100 is not a multiple of 28 "
                                                r"\(patch size x merge size\)$"):
        check_multiple("qwen2_5_vl", 100, 28, "patch size x merge size")
    with pytest.raises(SpatialProbeError, match=r"^internvl: resolution \(tile side\) 50 is not"):
        check_multiple("internvl", 50, 28, "patch size x pixel-shuffle size", what="resolution (tile side)")


def test_batch_grid_footprints_repeat_one_raster():
    footprints = batch_grid_footprints(2, 1, 2)
    assert footprints.shape == (2, 2, 4) and footprints.is_contiguous()
    assert footprints[1].tolist() == [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]


def test_grid_features_casts_and_shapes():
    tokens = torch.ones(3, 6, 5, dtype=torch.float16)
    features = grid_features(tokens, 2, 3, {"cls": torch.zeros(3, 1, 5)})
    assert features.tokens.dtype == torch.float32 and features.grid_shape == (2, 3)
    assert features.footprints[0, 4].tolist() == pytest.approx([1 / 3, 0.5, 2 / 3, 1.0])  # row 1, column 1
    assert list(features.extra) == ["cls"]
    assert grid_features(tokens, 2, 3).extra == {}
