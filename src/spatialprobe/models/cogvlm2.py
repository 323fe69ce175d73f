"""CogVLM2 (THUDM/cogvlm2-llama3-chat-19B and its chinese-chat sibling), traced by module path through the
checkpoint's own code: transformers has no native class, so it loads only with trust_remote_code.

Token layout, read from the checkpoint's `visual.py` and `modeling_cogvlm.py` (THUDM, 2024; not runnable here:
no weights, no hub — the real-model test runs only with $SPATIALPROBE_COGVLM2_PATH):
- `build_conversation_input_ids` resizes the image to `vision_config.image_size` x same (1344), bicubic, and
  normalizes with the CLIP mean/std; it lays the sequence out as [bos] + 2306 vision slots + the text
  "Question: {query} Answer:" (template "chat"), with `token_type_ids` 1 on the vision slots, 0 elsewhere.
- `model.model.vision` (EVA2CLIPModel): `patch_embedding` (Conv2d 14/14, a CLS token prepended, a learned
  position table of exactly 1 + 96^2 rows: the input size is fixed) -> `transformer.layers[i]` ([B, 1 + 96^2, C],
  CLS first, then the patches in raster order) -> CLS dropped -> `conv` (Conv2d 2x2 stride 2 on the NCHW raster:
  48x48) -> `linear_proj` (GLU) -> [boi, 48^2 tokens in raster order, eoi] (boi/eoi are learned vectors).
- `CogVLMModel.forward` writes that output, in order, over the positions where token_type_ids == 1: so the first
  vision slot holds boi, the last eoi, and the 2304 between them the image tokens in raster order.
- `model.model.layers[i]` are visual-expert decoder layers: a token of type 1 followed by a token of type 1 goes
  through the vision weights (boi and the patches), the rest (eoi, text) through the language weights; all image
  patches share one rotary position.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone
from .layout import gather_tokens, grid_features
from .vit import resize_whole

QUERY = "Describe the image."
TEMPLATE = "chat"  # the template the chat checkpoints were tuned with: "Question: {query} Answer:"
# what build_conversation_input_ids normalizes with (hard-coded there, not in a processor config)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_TOKEN_ID = 128002  # the llama3 reserved token CogVLM2 uses for its vision slots and padding
VISION_TOKEN_TYPE = 1


# --- layout facts, as pure functions (tested offline) ----------------------------------------------------------
def stage_names(vision_layers: int, llm_layers: int) -> list[str]:
    return ["vision.embed", *[f"vision.block.{i}" for i in range(vision_layers)], "projector.downsample",
            "projector.out", *[f"llm.layer.{i}" for i in range(llm_layers)]]


def grid_sides(image_size: int, patch_size: int) -> tuple[int, int]:
    """Patches per side in the EVA tower, and tokens per side after the 2x2 stride-2 conv."""
    side = image_size // patch_size
    return side, side // 2


def vision_slot_count(image_size: int, patch_size: int) -> int:
    """Vision slots in the sequence: the conv grid plus boi and eoi."""
    return grid_sides(image_size, patch_size)[1] ** 2 + 2


def vision_positions(token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of [B, L] token types: positions of boi [B], of the image tokens [B, M], of eoi [B]."""
    rows = [row.nonzero().flatten() for row in token_type_ids == VISION_TOKEN_TYPE]
    if len({len(r) for r in rows}) != 1 or len(rows[0]) < 3:
        raise ValueError(f"every row must hold one run of the same number (>= 3) of vision slots, got {[len(r) for r in rows]}")
    slots = torch.stack(rows)
    if not (slots.diff(dim=1) == 1).all():
        raise ValueError("the vision slots of a row must be one contiguous run")
    return slots[:, 0], slots[:, 1:-1], slots[:, -1]


def split_boi_eoi(vision_output: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tower's [B, 2 + M, D] output as image tokens [B, M, D] and {boi, eoi: [B, 1, D]}."""
    return vision_output[:, 1:-1], {"boi": vision_output[:, :1], "eoi": vision_output[:, -1:]}


def refuse_without_remote_code(trust_remote_code: bool, family: str, name_or_path: str) -> None:
    if not trust_remote_code:
        raise SpatialProbeError(
            f"{family}: {name_or_path!r} has no native transformers class and runs only with the checkpoint's own "
            "code: pass --trust-remote-code (config `trust_remote_code: true`) if you trust it")


def config_value(config: Any, key: str) -> Any:
    """A vision_config entry: the remote CogVLMConfig keeps vision_config as a plain dict."""
    return config[key] if isinstance(config, dict) else getattr(config, key)


def load_remote(backbone: HookedBackbone, resolution: int | None, fixed: str) -> None:
    """A CogVLM2 checkpoint's own model and tokenizer (remote code only, refused before anything loads otherwise)
    into `backbone`, and its fixed input size: `resolution` may only repeat it (`fixed`: what the position table
    fixes, for the message)."""
    refuse_without_remote_code(backbone.load_options.trust_remote_code, backbone.family, backbone.name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backbone.model = backbone.load_model(AutoModelForCausalLM)
    backbone.tokenizer = backbone.load_processor(AutoTokenizer)
    vision = backbone.model.config.vision_config
    backbone.resolution = int(config_value(vision, "image_size"))
    backbone.patch = int(config_value(vision, "patch_size"))
    if resolution is not None and int(resolution) != backbone.resolution:
        raise SpatialProbeError(f"{backbone.family}: the position table fixes {fixed} at {backbone.resolution} px; "
                                f"resolution {resolution} is not possible")
    backbone.side, backbone.merged_side = grid_sides(backbone.resolution, backbone.patch)


@dataclass
class Layout:
    boi: torch.Tensor  # [B] position of boi in the LLM sequence
    image_positions: torch.Tensor  # [B, M] positions of the image tokens, raster order
    eoi: torch.Tensor  # [B]


class CogVLM2Backbone(HookedBackbone):
    family = "cogvlm2"
    stage_summary = ("vision.embed, vision.block.<i> (96x96 patches, CLS in extra), projector.downsample (2x2 conv, "
                     "48x48), projector.out (GLU; boi/eoi in extra), llm.layer.<i> (image tokens, visual expert)")
    weights_source = "hub id or folder (THUDM/cogvlm2-llama3-chat-19B), trust_remote_code only"
    offline_test = "only with $SPATIALPROBE_COGVLM2_PATH"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        load_remote(self, resolution, "the input")

    @property
    def vision(self) -> torch.nn.Module:
        return self.unwrapped_model.model.vision

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        blocks, layers = list(self.vision.transformer.layers), list(self.unwrapped_model.model.layers)
        modules = [self.vision.patch_embedding, *blocks, self.vision.conv, self.vision, *layers]
        return dict(zip(stage_names(len(blocks), len(layers)), modules))

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "whole image, bicubic, no crop", "resolution": self.resolution, "patch_size": self.patch,
                "downsample": "conv 2x2 stride 2", "template": TEMPLATE, "query": QUERY,
                "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                "code": "remote (CogVLMForCausalLM, build_conversation_input_ids)"}

    def _input_device(self) -> torch.device:
        return self.model.device if self.load_options.places_itself() else self.device

    def _conversation(self, images: list[Image.Image], queries: list[str]) -> dict[str, Any]:
        """The model's own build_conversation_input_ids per image (the image already at its size: its resize is a no-op)."""
        built = [self.model.build_conversation_input_ids(self.tokenizer, query=query, history=[], images=[image],
                                                         template_version=TEMPLATE)
                 for image, query in zip(resize_whole(images, self.resolution), queries)]
        device = self._input_device()
        inputs = {key: torch.stack([b[key] for b in built]).to(device)
                  for key in ("input_ids", "token_type_ids", "attention_mask")}
        inputs["images"] = [[b["images"][0].to(device, self.dtype)] for b in built]
        return inputs

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Layout]:
        inputs = self._conversation(images, [QUERY] * len(images))
        boi, positions, eoi = vision_positions(inputs["token_type_ids"].cpu())
        if positions.shape[1] != self.merged_side ** 2:
            raise RuntimeError(f"{self.label}: {positions.shape[1] + 2} vision slots, expected "
                               f"{vision_slot_count(self.resolution, self.patch)}")
        return inputs, Layout(boi, positions, eoi)

    def run(self, inputs: dict[str, Any]) -> None:
        self.model(**inputs, use_cache=False)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        if stage.startswith("llm."):
            tokens, extra = self._at_image_positions(raw, layout)
            side = self.merged_side
        elif stage == "projector.out":
            tokens, extra = split_boi_eoi(raw)
            side = self.merged_side
        elif stage == "projector.downsample":  # NCHW raster
            tokens, extra = raw.flatten(2).transpose(1, 2), {}
            side = self.merged_side
        else:  # CLS first, then the patches in raster order
            tokens, extra = raw[:, 1:], {"cls": raw[:, :1]}
            side = self.side
        if tokens.shape[1] != side * side:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} tokens, expected {side}x{side}")
        return grid_features(tokens, side, side, {k: v.float() for k, v in extra.items()})

    @staticmethod
    def _at_image_positions(raw: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return gather_tokens(raw, layout.image_positions), {"boi": gather_tokens(raw, layout.boi[:, None]),
                                                            "eoi": gather_tokens(raw, layout.eoi[:, None])}

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers, as its cli_demo asks for them (one image and question at a time)."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self._conversation([image], [question])
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=PAD_TOKEN_ID)
            text = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])
            replies.append(text.split("<|end_of_text|>")[0].split("<|eot_id|>")[0].strip())
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        raise SpatialProbeError(f"{cls.family}: no tiny checkpoint can be built offline (the architecture exists only "
                                "as the checkpoint's own code on the hub); the real-model test runs only with "
                                "$SPATIALPROBE_COGVLM2_PATH")
