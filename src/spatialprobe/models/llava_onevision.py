"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`), traced in full on still images and on clips.

Still images (transformers 5.x, checked by tests/test_video_llava.py) go as in LLaVA-NeXT (`llava_next.py`): a base
tile, then the anyres mosaic unpadded, a learned newline after every mosaic row. Two differences:
- the llava-hf checkpoints use a SigLIP tower, which has no CLS, and feed the projector its whole sequence
  (strategy "full"); a CLIP tower with strategy "default" (CLS dropped) is read as in LLaVA-NeXT;
- `vision_aspect_ratio` "anyres_max_N" bilinearly shrinks a mosaic of more than ~N tiles' tokens. The default
  resolution is the largest square pinpoint whose mosaic is not shrunk (1152 px, 3x3 tiles, for the 384-px
  checkpoints); a resolution whose mosaic would be shrunk is refused by name.

Clips (`get_video_features`): every frame is resized here, whole, to one tile and goes through the tower on its
own; the projector maps every patch token, then `apply_pooling` (a method of the model, captured by wrapping it
during the forward pass) shrinks each frame's side x side raster to ceil(side / 2) bilinearly; the LLM receives
frame after frame, each pooled raster in raster order, then ONE learned newline for the whole clip. A pooled
token's footprint is the box of the patches it mixes: the weights are the model's own `apply_pooling` applied to
one-hot tokens (exactly 2x2 patches for an even side; neighbours overlap by a patch for an odd side, e.g. 27).
`projector.out` is the pooled tokens for clips (the newline in `extra["newline"]`, as at the LLM layers) and the
packed tokens for images. Clip stages are time-major, each token's `times` its frame's interval.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints
from .layout import standard_stages
from .llava_next import anyres_layout
from .llava_next_video import ClipBatch, LlavaNextVideoBackbone

FALLBACK_PROMPT = "<|im_start|>user <image>\n{}<|im_end|>\n<|im_start|>assistant\n"
#: anyres_max_N shrinks the mosaic once its tokens exceed N tiles' by this ratio (`pack_image_features`)
SHRINK_RATIO = 1.1


def mosaic_shrink(mosaic_shape: tuple[int, int], side: int, aspect: str) -> float:
    """The ratio by which `pack_image_features` would shrink a mosaic of `mosaic_shape` tokens (> 1.1: shrunk)."""
    max_tiles = int(aspect.strip("anyres_max_"))
    return math.sqrt(mosaic_shape[0] * mosaic_shape[1] / (max_tiles * side ** 2))


def footprints_of_mixes(weights: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """[M, 4]: for each row of `weights` [M, S] (how a new token mixes S source tokens), the box of the source
    footprints [S, 4] it draws on."""
    used = weights.abs() > 1e-6
    inf = torch.tensor(float("inf"))
    low = torch.where(used[..., None], source[None, :, :2], inf).amin(1)
    high = torch.where(used[..., None], source[None, :, 2:], -inf).amax(1)
    return torch.cat([low, high], dim=-1)


class LlavaOnevisionBackbone(LlavaNextVideoBackbone):
    family = "llava_onevision"
    stage_summary = ("vision.embed, vision.block.<i> (SigLIP per tile or frame), projector.out (images: after anyres "
                     "packing; clips: after the bilinear 2x frame pooling), llm.layer.<i>; clips time-major")
    weights_source = "hub id or folder (llava-hf/llava-onevision-qwen2-*-hf)"
    offline_test = "yes (tiny)"
    model_class = "LlavaOnevisionForConditionalGeneration"
    video_newlines = 1

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        self.out_tap = torch.nn.Identity()  # projector.out: the packed image tokens or the pooled frame tokens
        super().__init__(name_or_path, device, dtype, resolution, **load_options)
        shrink = mosaic_shrink(self.layout.mosaic_shape, self.tile // self.patch, self.model.config.vision_aspect_ratio)
        if shrink > SHRINK_RATIO:
            raise SpatialProbeError(
                f"{self.family}: at resolution {self.resolution} the model shrinks the {self.layout.mosaic_shape} "
                f"token mosaic ({self.model.config.vision_aspect_ratio}), which is not traced; use at most "
                f"{self.default_resolution()}")

    @property
    def has_cls(self) -> bool:
        return hasattr(self.tower.embeddings, "class_embedding")

    def _check_processor(self) -> None:
        own = [list(map(int, p)) for p in self.processor.image_processor.image_grid_pinpoints]
        if own != self.pinpoints:
            raise SpatialProbeError(f"{self.family} {self.name_or_path!r}: processor grid pinpoints {own} differ "
                                    f"from the model's {self.pinpoints}")
        strategy = self.model.config.vision_feature_select_strategy
        if (strategy == "default") != self.has_cls:
            # the packing lays out patch tokens only: CLS must be dropped where there is one, and only there
            raise SpatialProbeError(f"{self.family}: vision_feature_select_strategy {strategy!r} does not fit a "
                                    f"tower {'with' if self.has_cls else 'without'} CLS")

    def default_resolution(self) -> int:
        """The largest square pinpoint whose mosaic the model does not shrink (nothing padded, nothing resampled)."""
        side, aspect = self.tile // self.patch, self.model.config.vision_aspect_ratio
        fits = [h for h, w in self.pinpoints if h == w and mosaic_shrink(
            anyres_layout(h, self.tile, self.patch, self.pinpoints).mosaic_shape, side, aspect) <= SHRINK_RATIO]
        return max(fits) if fits else self.tile

    def prompt_for(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            return super().prompt_for(question)
        return FALLBACK_PROMPT.format(question).replace("<image>", self.processor.image_token)

    def video_prompt_for(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            return super().video_prompt_for(question)
        return FALLBACK_PROMPT.format(question).replace("<image>", self.processor.video_token)

    def preprocessing(self) -> dict[str, Any]:
        return {**super().preprocessing(), "vision_aspect_ratio": self.model.config.vision_aspect_ratio}

    def video_pool(self) -> list:
        return ["bilinear", "ceil(side / 2)"]

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        inner = self.unwrapped_model.model
        return standard_stages(self.tower.embeddings, self.tower.encoder.layers, {"out": self.out_tap},
                               inner.language_model.layers)

    def video_pooled_footprints(self) -> torch.Tensor:
        side = self.frame_side
        with torch.no_grad():  # the model's own pooling of one-hot tokens: row k = how pooled token k mixes patches
            weights = self.unwrapped_model.model.apply_pooling(torch.eye(side * side)[None])[0]
        return footprints_of_mixes(weights.float().cpu(), grid_footprints(side, side))

    def run(self, inputs: dict[str, Any]) -> None:
        inner = self.unwrapped_model.model
        if "pixel_values_videos" in inputs:
            pool = inner.apply_pooling

            def pooled_tap(features):
                return self.out_tap(pool(features))

            inner.apply_pooling = pooled_tap  # an instance attribute shadows the method for this forward only
            try:
                super().run(inputs)
            finally:
                del inner.apply_pooling
            return
        handle = inner.multi_modal_projector.register_forward_hook(lambda _module, _args, out: self.out_tap(out))
        try:
            super().run(inputs)
        finally:
            handle.remove()

    def to_features(self, stage: str, raw: torch.Tensor, batch) -> TokenFeatures:
        if isinstance(batch, ClipBatch) or not stage.startswith("vision.") or self.has_cls:
            return super().to_features(stage, raw, batch)
        # a tower without CLS: every token of a tile is a patch
        tokens, dropped = self._in_llm_order(raw, batch)
        footprints = self.layout.footprints.expand(batch.images, -1, -1).contiguous()
        extra = {"padding": dropped.float()} if dropped.shape[1] else {}
        return TokenFeatures(tokens.float(), footprints, None, extra)

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.llava_onevision import save_tiny_llava_onevision

        save_tiny_llava_onevision(Path(path), seed)
