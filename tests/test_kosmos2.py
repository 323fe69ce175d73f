"""Kosmos-2 traced in full on a tiny random-initialized model of the real architecture."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.kosmos2 import PROMPT
from spatialprobe.testing import save_tiny

SIZE = 56  # a 4x4 grid of 14-px patches
QUERY_STAGES = ["projector.out", "llm.layer.0", "llm.layer.1"]


@pytest.fixture(scope="module")
def kosmos(tmp_path_factory):
    return sp.load_backbone("kosmos2", str(save_tiny("kosmos2", tmp_path_factory.mktemp("kosmos2"))))


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell=14):
    """A plain image with a bright noise square filling patch (row, col)."""
    array = np.asarray(plain()).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_stages_shapes_and_footprints(kosmos):
    assert kosmos.stages == ["vision.embed", "vision.block.0", "vision.block.1", *QUERY_STAGES]
    feats = kosmos.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    for stage in ("vision.embed", "vision.block.0", "vision.block.1"):
        assert feats[stage].grid().shape == (2, 4, 4, 32) and feats[stage].extra["cls"].shape == (2, 1, 32)
        assert torch.allclose(feats[stage].footprints[1, 6], torch.tensor([0.5, 0.25, 0.75, 0.5]))  # row 1, col 2
    for stage in QUERY_STAGES:  # 64 learned queries with no place in the image: no spatial tokens at all
        f = feats[stage]
        assert f.tokens.shape == (2, 0, 32) and f.footprints.shape == (2, 0, 4) and f.grid_shape is None
        assert list(f.extra) == ["queries"] and f.extra["queries"].shape == (2, 64, 32)


@pytest.mark.parametrize("plants", [[(0, 2), (3, 1)], [(1, 3), (2, 0)]])
def test_planted_patch_is_found_in_its_token_at_every_spatial_stage(kosmos, plants):
    stages = ["vision.embed", "vision.block.0", "vision.block.1"]
    marked = kosmos.extract([planted(r, c) for r, c in plants], stages=stages)
    base = kosmos.extract([plain()] * len(plants), stages=stages)
    for stage in stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)
        for image, (row, col) in enumerate(plants):
            assert change[image].argmax().item() == row * 4 + col, f"{stage} image {image}"
    embed_change = (marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1)
    assert torch.count_nonzero(embed_change > 1e-5) == len(plants)  # the patch embedding is local


def test_queries_see_the_image(kosmos):
    marked = kosmos.extract([planted(1, 2)], stages=QUERY_STAGES)
    base = kosmos.extract([plain()], stages=QUERY_STAGES)
    for stage in QUERY_STAGES:  # relative: random projector weights keep the queries small
        before, after = base[stage].extra["queries"], marked[stage].extra["queries"]
        assert (after - before).abs().max() > 1e-3 * before.abs().max(), stage


def test_projector_out_is_what_the_text_model_receives(kosmos):
    images = [planted(0, 3), planted(2, 1)]
    feats = kosmos.extract(images, stages=QUERY_STAGES)
    queries = feats["projector.out"].extra["queries"]
    inputs, layout = kosmos.prepare(images)
    with torch.inference_mode():
        own = kosmos.model.get_image_features(inputs["pixel_values"]).pooler_output
    assert torch.allclose(queries, own, atol=1e-6)
    # the text model gets them as `image_embeds`, and its first layer sees them at the placeholders,
    # scaled by sqrt(embed_dim), plus sinusoidal positions
    text = kosmos.model.text_model.model
    seen = {}
    handles = [
        text.register_forward_pre_hook(lambda _m, _a, kwargs: seen.update(embeds=kwargs["image_embeds"]),
                                       with_kwargs=True),
        text.layers[0].register_forward_pre_hook(lambda _m, args: seen.update(h=args[0])),
    ]
    try:
        with torch.inference_mode():
            out = kosmos.model(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.allclose(seen["embeds"], queries, atol=1e-6)
    assert layout.image_positions[0].tolist() == list(range(2, 66))  # after <s> <image>
    index = layout.image_positions[..., None].expand(-1, -1, 32)
    with torch.inference_mode():
        positions = text.embed_positions(input_ids=inputs["input_ids"])
    expected = queries * text.embed_scale + torch.gather(positions, 1, index)
    assert torch.allclose(torch.gather(seen["h"], 1, index), expected, atol=1e-5)
    # and the traced layers are the model's own hidden states at those positions (its last one after the
    # final LayerNorm)
    first, last = (torch.gather(h, 1, index) for h in out.hidden_states[1:])
    assert torch.allclose(feats["llm.layer.0"].extra["queries"], first, atol=1e-5)
    with torch.inference_mode():
        assert torch.allclose(text.layer_norm(feats["llm.layer.1"].extra["queries"]), last, atol=1e-5)


def test_vision_stages_never_run_the_text_model(kosmos):
    fired = []
    handles = [kosmos.model.text_model.model.layers[0].register_forward_hook(lambda *a: fired.append("text")),
               kosmos.model.image_to_text_projection.register_forward_hook(lambda *a: fired.append("projector"))]
    try:
        kosmos.extract([plain()], stages=["vision.block.-1"])
        kosmos.extract([plain()], stages=["projector.out"])
    finally:
        for handle in handles:
            handle.remove()
    assert fired == ["projector"]


def test_answer_is_only_the_new_text(kosmos):
    replies = kosmos.answer([plain(), planted(1, 1)], ["What colour is the shape?", "What shape is it?"],
                            max_new_tokens=3)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert not any("Question" in r or "<" in r for r in replies)  # neither the prompt nor special tokens


def test_preprocessing_and_fixed_resolution(kosmos):
    record = kosmos.preprocessing()
    assert record["resolution"] == SIZE and record["prompt"] == PROMPT and record["latent_queries"] == 64
    with pytest.raises(sp.SpatialProbeError, match="resolution 112 is not supported"):
        sp.load_backbone("kosmos2", kosmos.name_or_path, resolution=112)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="kosmos2.*missing-model"):
        sp.load_backbone("kosmos2", str(tmp_path / "missing-model"))
