"""InternVL, traced in full: InternViT embedding and blocks, the 2x2 pixel shuffle, the MLP projector, LLM layers.

Token layout (transformers 5.x `InternVLForConditionalGeneration`, checked by tests/test_internvl.py):
- The whole image is resized here to (columns x tile, rows x tile) px; the processor's `crop_to_patches`
  (min_patches = max_patches = columns x rows) then cuts it into exact tiles, row-major, and appends a
  thumbnail (the whole image resized to one tile) when there is more than one tile. Each tile is a separate
  image for InternViT: `pixel_values` is [images x tiles, 3, tile, tile], tiles of one image consecutive.
- InternViT output per tile: [CLS, patches in raster order]. CLS goes to `extra["cls"]` ([B, tiles, C]).
- `pixel_shuffle` (a method of the model, not a module) turns a tile's side x side patch raster into a
  side/2 x side/2 raster; token (i, j) holds the 2x2 patches (2i..2i+1, 2j..2j+1) in its channels, packed
  row-major: (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1). It is captured by wrapping the bound method
  during the forward pass. (The original remote code's `ps_version="v1"` skips the last transpose, so its
  tokens come column-major; they are put back in raster order here.)
- `multi_modal_projector` (LayerNorm, Linear, GELU, Linear) maps each shuffled token to one LLM embedding;
  the LLM receives them tile after tile, thumbnail last, at the `<IMG_CONTEXT>` positions between
  `<img>` and `</img>`.
Stages span several tiles, so grid_shape is None unless the tile grid is 1x1: the footprints carry the
geometry (each fine tile's tokens cover their crop; the thumbnail's tokens cover the whole image coarsely).

Clips, as InternVL's video chat reads them (checked by tests/test_video_internvl.py): every frame is resized
whole to ONE tile (no crops, no thumbnail) and is one image for InternViT, frames in order; the prompt holds
"Frame1: <img>...</img>\nFrame2: ..." before the question (the -hf processor's `<video>` expansion; the remote
path writes "Frame{i}: <image>\n" lines as the model card's video example does). Every stage is time-major, a
frame's tokens in raster order, each token's `times` its frame's interval; CLS goes to `extra["cls"]` [B, F, C].

The original checkpoints (OpenGVLab/InternVL2-*, `InternVLChatModel`) ship their own code; with
trust_remote_code they are traced by module path (vision_model.embeddings, vision_model.encoder.layers, the
model's pixel_shuffle, mlp1, language_model.model.layers) with their own preprocessing (tiles normalized with
ImageNet mean/std, prompt from the checkpoint's conversation template with `<img><IMG_CONTEXT>*N</img>`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints
from .base import HookedBackbone, Sample, is_clip
from .frames import check_context, clip_lengths, llm_context
from .layout import check_multiple, clip_grid_features, gather_tokens, standard_stages, step_times, token_positions

QUESTION = "<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n"  # the -hf chat template
DESCRIBE = "Describe the image."
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


@dataclass(frozen=True)
class Tiling:
    """Where each tile of an image lies: row-major fine tiles, then (if any) the whole-image thumbnail."""

    columns: int
    rows: int
    tile: int  # px per tile side
    thumbnail: bool

    @property
    def count(self) -> int:
        fine = self.columns * self.rows
        return fine + 1 if self.thumbnail and fine > 1 else fine

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) every image is resized to, so that the tiles are exact crops."""
        return self.columns * self.tile, self.rows * self.tile

    def regions(self) -> list[tuple[float, float, float, float]]:
        fine = [(c / self.columns, r / self.rows, (c + 1) / self.columns, (r + 1) / self.rows)
                for r in range(self.rows) for c in range(self.columns)]
        return fine + [(0.0, 0.0, 1.0, 1.0)] * (self.count - len(fine))

    def footprints(self, side: int) -> torch.Tensor:
        """[tiles * side^2, 4]: a side x side raster in every tile, tiles in model order."""
        return torch.cat([grid_footprints(side, side, region) for region in self.regions()])

    def crops(self, image: Image.Image) -> list[Image.Image]:
        """The tiles of an image already resized to `image_size` (the remote-code path's own cropping)."""
        t = self.tile
        tiles = [image.crop((c * t, r * t, (c + 1) * t, (r + 1) * t))
                 for r in range(self.rows) for c in range(self.columns)]
        if self.count > len(tiles):
            tiles.append(image.resize((t, t), Image.BICUBIC))
        return tiles


@dataclass
class Layout:
    batch: int
    image_positions: torch.Tensor  # [B, M] positions of the image-context tokens in the LLM sequence


@dataclass
class ClipLayout:
    batch: int
    frames: int  # one tile per frame
    image_positions: torch.Tensor  # [B, M] positions of the frames' image-context tokens in the LLM sequence


@dataclass
class Parts:
    """The modules (and the pixel-shuffle owner) of one checkpoint layout, native or remote code."""

    embed: torch.nn.Module
    blocks: list[torch.nn.Module]
    shuffle_owner: torch.nn.Module  # the module whose `pixel_shuffle` method the forward calls
    projector: torch.nn.Module
    llm_layers: list[torch.nn.Module]


def parse_tile_grid(tile_grid) -> tuple[int, int]:
    """[columns, rows] of fine tiles; a single number n means n x n."""
    grid = [tile_grid, tile_grid] if isinstance(tile_grid, int) else list(tile_grid)
    if len(grid) != 2 or not all(isinstance(n, int) and n >= 1 for n in grid):
        raise SpatialProbeError(f"internvl: tile_grid must be [columns, rows] of positive integers, got {tile_grid!r}")
    return grid[0], grid[1]


class InternVLBackbone(HookedBackbone):
    family = "internvl"
    modalities = ("image", "video")
    stage_summary = ("vision.embed, vision.block.<i> (per tile, CLS in extra), projector.pixel_shuffle (2x2 into "
                     "channels), projector.out, llm.layer.<i> (image tokens); tiles row-major + thumbnail, no grid")
    weights_source = ("hub id or folder (OpenGVLab/InternVL3-*-hf); original OpenGVLab/InternVL2-* "
                      "with trust_remote_code")
    offline_test = "yes (tiny); remote code only with $SPATIALPROBE_INTERNVL2_PATH"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 tile_grid: int | tuple[int, int] | list[int] = (2, 2), **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        columns, rows = parse_tile_grid(tile_grid)  # before the (slow) load
        self.remote = self._needs_remote_code()
        if self.remote:
            self._load_remote()
        else:
            self._load_native()
        self.merge = int(round(1 / self.downsample_ratio))
        tile = int(resolution or self.default_tile)
        check_multiple(self.family, tile, self.patch * self.merge, "patch size x pixel-shuffle size",
                       what="resolution (tile side)")
        self.tiling = Tiling(columns, rows, tile, self.use_thumbnail)
        self.side = tile // self.patch  # patches per tile side
        self.tokens_per_tile = (self.side // self.merge) ** 2
        if not self.remote:
            self.processor.image_seq_length = self.tokens_per_tile  # the prompt's token count follows the tile size
        self.shuffle_tap = torch.nn.Identity()  # a hook point for the pixel-shuffle output (not part of the model)

    # --- loading ------------------------------------------------------------------------------------
    def _needs_remote_code(self) -> bool:
        """Native -hf checkpoint, or the original InternVLChatModel (refused unless trust_remote_code)."""
        from transformers import PreTrainedConfig

        revision = {"revision": self.load_options.revision} if self.load_options.revision else {}
        try:
            config, _ = PreTrainedConfig.get_config_dict(self.name_or_path, **revision)
        except (OSError, ValueError) as err:
            raise SpatialProbeError(self._load_error(self.name_or_path, err)) from err
        model_type = config.get("model_type")
        if model_type == "internvl":
            return False
        if "auto_map" not in config:
            raise SpatialProbeError(f"{self.family}: {self.name_or_path!r} is not an InternVL checkpoint "
                                    f"(model_type {model_type!r})")
        if not self.load_options.trust_remote_code:
            raise SpatialProbeError(
                f"{self.family}: {self.name_or_path!r} is an original InternVL checkpoint ({model_type}) that runs its "
                "own code: pass --trust-remote-code (trust_remote_code: true) if you trust it, or use an -hf checkpoint")
        return True

    def _load_native(self) -> None:
        from transformers import AutoProcessor, InternVLForConditionalGeneration

        self.model = self.load_model(InternVLForConditionalGeneration)
        self.processor = self.load_processor(AutoProcessor)
        config, image_processor = self.model.config, self.processor.image_processor
        self.patch = int(config.vision_config.patch_size[0])
        self.downsample_ratio = float(config.downsample_ratio)
        self.default_tile = int(image_processor.size["height"])
        self.use_thumbnail = True  # GotOcr2ImageProcessor always adds one when there are several tiles
        self.image_mean, self.image_std = list(image_processor.image_mean), list(image_processor.image_std)
        inner = self.model.model
        self.parts = Parts(inner.vision_tower.embeddings, list(inner.vision_tower.encoder.layer), inner,
                           inner.multi_modal_projector, list(inner.language_model.layers))
        self.image_token_id = int(config.image_token_id)
        self.transposed_shuffle = False

    def _load_remote(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model = self.load_model(AutoModel)
        self.processor = self.load_processor(AutoTokenizer, use_fast=False)
        config = self.model.config
        self.patch = int(config.vision_config.patch_size)
        self.downsample_ratio = float(config.downsample_ratio)
        self.default_tile = int(getattr(config, "force_image_size", None) or config.vision_config.image_size)
        self.use_thumbnail = bool(getattr(config, "use_thumbnail", True))
        self.image_mean, self.image_std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        model = self.model
        self.parts = Parts(model.vision_model.embeddings, list(model.vision_model.encoder.layers), model, model.mlp1,
                           list(model.language_model.model.layers))
        self.image_token_id = int(self.processor.convert_tokens_to_ids(IMG_CONTEXT))
        model.img_context_token_id = self.image_token_id  # its forward and generate read it from here
        self.transposed_shuffle = getattr(model, "ps_version", "v2") == "v1"

    # --- stages -----------------------------------------------------------------------------------
    def stage_modules(self) -> dict[str, torch.nn.Module]:
        projector = {"pixel_shuffle": self.shuffle_tap, "out": self.parts.projector}
        return standard_stages(self.parts.embed, self.parts.blocks, projector, self.parts.llm_layers)

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "whole image, bicubic, no crop", "image_size": list(self.tiling.image_size),
                "tile_size": self.tiling.tile, "tile_grid": [self.tiling.columns, self.tiling.rows],
                "thumbnail": self.tiling.count > self.tiling.columns * self.tiling.rows,
                "tile_order": "row-major tiles, then the thumbnail", "patch_size": self.patch,
                "pixel_shuffle": self.merge, "tokens_per_tile": self.tokens_per_tile,
                "image_mean": list(map(float, self.image_mean)), "image_std": list(map(float, self.image_std)),
                "code": "remote (InternVLChatModel)" if self.remote else "transformers (InternVLForConditionalGeneration)",
                "prompt": self._prompt(DESCRIBE).replace(IMG_CONTEXT * self.tokens_per_tile * self.tiling.count,
                                                         f"{IMG_CONTEXT}*{self.tokens_per_tile * self.tiling.count}")}

    def clip_preprocessing(self) -> dict[str, Any]:
        # frames are normalized by the -hf checkpoint's video processor, or as tiles are by the remote code
        mean, std = self.image_mean, self.image_std
        if not self.remote:
            mean, std = self.processor.video_processor.image_mean, self.processor.video_processor.image_std
        return {"clip": "every frame resized whole to one tile (no crops, no thumbnail)",
                "prompt": "'FrameN: <img>...</img>' per frame, then the question",
                "video_mean": list(map(float, mean)), "video_std": list(map(float, std))}

    # --- inputs -----------------------------------------------------------------------------------
    def _resized(self, images: list[Image.Image]) -> list[Image.Image]:
        return [im.convert("RGB").resize(self.tiling.image_size, Image.BICUBIC) for im in images]

    def _prompt(self, question: str) -> str:
        if not self.remote:  # the processor expands the one image token into <img> + N context tokens + </img>
            return QUESTION.format(image=self.processor.image_token, question=question)
        template = self._remote_template()
        template.append_message(template.roles[0], "<image>\n" + question)
        template.append_message(template.roles[1], None)
        image = IMG_START + IMG_CONTEXT * (self.tokens_per_tile * self.tiling.count) + IMG_END
        return template.get_prompt().replace("<image>", image, 1)

    def _remote_template(self):
        template = copy.deepcopy(self.model.conv_template)
        template.system_message = self.model.system_message
        return template

    def _inputs(self, images: list[Image.Image], question: str) -> dict[str, Any]:
        resized = self._resized(images)
        prompts = [self._prompt(question)] * len(images)
        if self.remote:
            inputs = dict(self.processor(prompts, return_tensors="pt"))
            inputs["pixel_values"] = self._remote_pixels(resized)
        else:
            count = self.tiling.columns * self.tiling.rows
            # min = max = the grid's tile count: the processor's canvas is exactly our grid, its crops exact
            inputs = self.processor(text=prompts, images=resized, return_tensors="pt",
                                    images_kwargs={"do_resize": False, "crop_to_patches": True,
                                                   "min_patches": count, "max_patches": count,
                                                   "size": {"height": self.tiling.tile, "width": self.tiling.tile}})
        if inputs["pixel_values"].shape[0] != len(images) * self.tiling.count:
            raise RuntimeError(f"{self.label}: preprocessing made {inputs['pixel_values'].shape[0]} tiles for "
                               f"{len(images)} images, expected {self.tiling.count} each")
        return self.move_inputs(inputs)

    def _remote_pixels(self, resized: list[Image.Image]) -> torch.Tensor:
        return self._remote_tile_pixels([tile for image in resized for tile in self.tiling.crops(image)])

    def _remote_tile_pixels(self, tiles: list[Image.Image]) -> torch.Tensor:
        """The original checkpoints' preprocessing of each tile: to [0, 1], ImageNet mean/std."""
        arrays = [np.asarray(tile, dtype=np.float32) / 255.0 for tile in tiles]
        pixels = (np.stack(arrays) - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    def prepare(self, images: list[Sample]) -> tuple[dict[str, Any], Layout | ClipLayout]:
        if is_clip(images[0]):
            inputs = self._clip_inputs(images, DESCRIBE)
            positions = token_positions(inputs["input_ids"] == self.image_token_id)
            return inputs, ClipLayout(len(images), len(images[0]), positions)
        inputs = self._inputs(images, DESCRIBE)
        positions = token_positions(inputs["input_ids"] == self.image_token_id)
        return inputs, Layout(len(images), positions)

    # --- clips: one tile per frame ------------------------------------------------------------------
    def check_modalities(self, samples: Sequence[Sample]) -> None:
        super().check_modalities(samples)
        frames = clip_lengths(self.family, samples)
        if frames is not None:
            config = self.model.config
            llm = getattr(config, "text_config", None) or getattr(config, "llm_config", None)
            per_frame = self.tokens_per_tile + 6  # + "FrameN: <img>", "</img>" and the newline
            check_context(self.family, self.name_or_path, frames, frames * per_frame, llm_context(llm))

    def _clip_prompt(self, frames: int, question: str) -> str:
        if not self.remote:  # the processor expands <video> into "Frame1: <img>...</img>\nFrame2: ..."
            return QUESTION.format(image=self.processor.video_token, question=question)
        template = self._remote_template()
        template.append_message(template.roles[0], "".join(f"Frame{i + 1}: <image>\n" for i in range(frames)) + question)
        template.append_message(template.roles[1], None)
        return template.get_prompt().replace("<image>", IMG_START + IMG_CONTEXT * self.tokens_per_tile + IMG_END)

    def _clip_inputs(self, clips: list[Sample], question: str) -> dict[str, Any]:
        tile, frames = self.tiling.tile, len(clips[0])
        resized = [[frame.convert("RGB").resize((tile, tile), Image.BICUBIC) for frame in clip] for clip in clips]
        prompts = [self._clip_prompt(frames, question)] * len(clips)
        if self.remote:
            inputs = dict(self.processor(prompts, return_tensors="pt"))
            inputs["pixel_values"] = self._remote_tile_pixels([frame for clip in resized for frame in clip])
        else:
            inputs = self.processor(text=prompts, videos=resized, return_tensors="pt",
                                    videos_kwargs={"do_resize": False, "size": {"height": tile, "width": tile}})
        if inputs["pixel_values"].shape[0] != len(clips) * frames:
            raise RuntimeError(f"{self.label}: preprocessing made {inputs['pixel_values'].shape[0]} tiles for "
                               f"{len(clips)} clips of {frames} frames, expected one per frame")
        return self.move_inputs(inputs)

    def run(self, inputs: dict[str, Any]) -> None:
        owner = self.parts.shuffle_owner
        shuffle = owner.pixel_shuffle

        def tapped(*args, **kwargs):
            return self.shuffle_tap(shuffle(*args, **kwargs))

        owner.pixel_shuffle = tapped  # an instance attribute shadows the method for this forward only
        try:
            if self.remote:  # its forward needs one flag per tile (1 = a real image)
                tiles = inputs["pixel_values"].shape[0]
                self.model(**inputs, image_flags=torch.ones(tiles, 1, dtype=torch.long, device=self.device))
            else:
                self.model(**inputs)
        finally:
            del owner.pixel_shuffle

    # --- features ---------------------------------------------------------------------------------
    def _raster(self, merged: torch.Tensor) -> torch.Tensor:
        """[n, s*s, C] shuffled tokens of each tile in raster order (undoes ps_version v1's transpose)."""
        if not self.transposed_shuffle:
            return merged
        n, count, channels = merged.shape
        s = int(round(count ** 0.5))
        return merged.reshape(n, s, s, channels).transpose(1, 2).reshape(n, count, channels)

    def _tile_tokens(self, stage: str, raw: torch.Tensor, layout: Layout | ClipLayout,
                     tiles: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """[B, tiles * side^2, C] tokens, tile after tile, each tile's raster in raster order; the raster's side;
        CLS per tile at the vision stages."""
        batch = layout.batch
        extra = {}
        if stage.startswith("vision."):
            side = self.side
            extra["cls"] = raw[:, 0].reshape(batch, tiles, -1).float()
            per_tile = raw[:, 1:]
        else:
            side = self.side // self.merge
            if stage.startswith("llm."):
                per_tile = gather_tokens(raw, layout.image_positions)
            else:  # pixel_shuffle gives [n, s, s, 4C]; the projector [n, s*s, C']
                per_tile = raw
            per_tile = self._raster(per_tile.reshape(batch * tiles, side * side, raw.shape[-1]))
        if per_tile.shape[1] != side * side:
            raise RuntimeError(f"{self.label} {stage}: {per_tile.shape[1]} tokens per tile, expected {side}^2")
        return per_tile.reshape(batch, tiles * side * side, -1).float(), side, extra

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout | ClipLayout) -> TokenFeatures:
        if isinstance(layout, ClipLayout):  # one tile per frame, the whole frame
            tokens, side, extra = self._tile_tokens(stage, raw, layout, layout.frames)
            return clip_grid_features(tokens, side, side, step_times(layout.frames, 1), extra)
        tiles = self.tiling.count
        tokens, side, extra = self._tile_tokens(stage, raw, layout, tiles)
        footprints = self.tiling.footprints(side).expand(layout.batch, -1, -1).contiguous()
        grid_shape = (side, side) if tiles == 1 else None
        return TokenFeatures(tokens, footprints, grid_shape, extra)

    # --- answers ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers (one image and question at a time: no padding to get wrong)."""
        return [self._answer_one(image, question, max_new_tokens) for image, question in zip(images, questions)]

    def _answer_one(self, image: Image.Image, question: str, max_new_tokens: int) -> str:
        inputs = self._inputs([image], question)
        if not self.remote:
            return self.greedy_reply(inputs, max_new_tokens)
        # the remote generate embeds the prompt itself and returns only the new tokens
        separator = self._remote_template().sep
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=self.processor.convert_tokens_to_ids(separator))
        text = self.processor.batch_decode(output, skip_special_tokens=True)[0]
        return text.split(separator)[0].strip()

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.internvl import save_tiny_internvl

        save_tiny_internvl(Path(path), seed)
