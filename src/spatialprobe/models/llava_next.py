"""LLaVA-NeXT (LLaVA-1.6), traced in full: CLIP embed and blocks, the projector after anyres packing, LLM layers.

Token layout (transformers 5.x `LlavaNextForConditionalGeneration`, checked by the tests):
- The image processor cuts each image into tiles of the tower's input size: tile 0 is the base tile, the whole
  image resized to one tile; then the image is resized (aspect kept) into the best of `image_grid_pinpoints`
  (`select_best_resolution`), zero-padded to it (centred) and cut into tiles in raster order of tiles.
- The CLIP tower runs every tile of every image as one batch: [images * tiles, 1 + side^2, C], CLS first.
  LLaVA feeds its LLM the penultimate block (`vision_feature_layer=-2`) without CLS (strategy "default");
  all blocks are traced anyway, CLS goes to `extra["cls"]`.
- `pack_image_features` keeps the base tile's side^2 tokens in raster order, lays the high-resolution tiles'
  tokens out as ONE raster over the whole tile mosaic, crops the rows / columns that cover the padding
  (`unpad_image`, computed in token units from the image size) and appends one `image_newline` token at the end
  of every row. The LLM sees: base tokens, then row by row the mosaic tokens, each row followed by a newline.
- Images are resized here, whole, to a `resolution` x `resolution` square, so the layout is the same for every
  image. The default is the largest square pinpoint (672 px for the llava-hf v1.6 checkpoints: 2x2 tiles of
  336 px, 576 base + 48x48 mosaic tokens + 48 newlines): the square fits its pinpoint exactly, so there is no
  padding and unpadding removes nothing. Other resolutions may land in a non-square pinpoint; the padding and
  the tokens unpadding keeps are computed with the model's own helpers, so footprints stay exact.

Every stage lists its tokens in the LLM's order (base tile, then the kept mosaic in raster order), so token k is
the same image region at every stage; `grid_shape` is None (a coarse base tile plus fine tiles overlap).
Mosaic tokens that unpadding drops go to `extra["padding"]` at the vision stages (none for the default size);
newline tokens go to `extra["newline"]` at `projector.out` (the learned `image_newline`) and the LLM layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints
from .base import HookedBackbone
from .layout import gather_tokens, standard_stages, token_positions
from .vit import resize_whole

DESCRIBE = "Describe the image."
# the llava-hf vicuna prompt, for checkpoints that ship no chat template
FALLBACK_PROMPT = "USER: <image>\n{} ASSISTANT:"


@dataclass(frozen=True)
class AnyresLayout:
    """Where each image token of a `resolution`-px square comes from and what it covers."""

    tiles: int  # base tile + high-resolution tiles per image
    side: int  # tokens per tile side
    order: torch.Tensor  # [N] index into an image's tile tokens [tiles * side^2], in the LLM's order
    dropped: torch.Tensor  # [D] tile tokens that unpadding removes (they cover padding)
    footprints: torch.Tensor  # [N, 4]
    is_newline: torch.Tensor  # [M] over the image-token span of the LLM sequence
    mosaic_shape: tuple[int, int]  # kept mosaic tokens (rows, cols); one newline per row


def anyres_layout(resolution: int, tile: int, patch: int, pinpoints: list) -> AnyresLayout:
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    side = tile // patch
    tile_rows, tile_cols = get_anyres_image_grid_shape((resolution, resolution), pinpoints, tile)
    rows, cols = torch.meshgrid(torch.arange(tile_rows * side), torch.arange(tile_cols * side), indexing="ij")
    tile_index = (rows // side) * tile_cols + cols // side
    index = (1 + tile_index) * side * side + (rows % side) * side + cols % side  # tile 0 is the base tile
    # the model's own unpadding, applied to (index, row, col) planes instead of features
    kept_index, kept_rows, kept_cols = unpad_image(torch.stack([index, rows, cols]), [resolution, resolution])
    base = torch.arange(side * side)
    order = torch.cat([base, kept_index.reshape(-1)])
    dropped = index.reshape(-1)[~torch.isin(index.reshape(-1), kept_index.reshape(-1))]

    # the processor resizes the image into the pinpoint (aspect kept) and pads it centred, in pixels
    best_h, best_w = select_best_resolution((resolution, resolution), pinpoints)
    new_h, new_w = get_patch_output_size(torch.zeros(3, resolution, resolution), (best_h, best_w),
                                         ChannelDimension.FIRST)
    pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    r, c = kept_rows.reshape(-1).double(), kept_cols.reshape(-1).double()
    mosaic = torch.stack([(c * patch - pad_x) / new_w, (r * patch - pad_y) / new_h,
                          ((c + 1) * patch - pad_x) / new_w, ((r + 1) * patch - pad_y) / new_h], dim=-1)
    footprints = torch.cat([grid_footprints(side, side), mosaic.clamp(0, 1).float()])

    mosaic_rows, mosaic_cols = kept_index.shape
    row_flags = torch.zeros(mosaic_rows, mosaic_cols + 1, dtype=torch.bool)
    row_flags[:, -1] = True
    is_newline = torch.cat([torch.zeros(side * side, dtype=torch.bool), row_flags.reshape(-1)])
    return AnyresLayout(1 + tile_rows * tile_cols, side, order, dropped, footprints, is_newline,
                        (mosaic_rows, mosaic_cols))


@dataclass
class Batch:
    images: int
    image_positions: torch.Tensor  # [B, M] positions of image tokens (newlines included) in the LLM sequence


class LlavaNextBackbone(HookedBackbone):
    family = "llava_next"
    stage_summary = ("vision.embed, vision.block.<i> (CLIP, every tile), projector.out (after anyres packing), "
                     "llm.layer.<i>; tokens = base tile + unpadded high-res mosaic, newlines in extra")
    weights_source = "hub id or folder (llava-hf/llava-v1.6-*-hf)"
    offline_test = "yes (tiny)"
    #: the transformers class that loads the checkpoint (the video family loads its own through this)
    model_class = "LlavaNextForConditionalGeneration"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        import transformers

        self.model = self.load_model(getattr(transformers, self.model_class))
        self.processor = self.load_processor(transformers.AutoProcessor)
        config = self.model.config
        self.tile, self.patch = int(config.vision_config.image_size), int(config.vision_config.patch_size)
        self.pinpoints = [list(map(int, p)) for p in config.image_grid_pinpoints]
        self._check_processor()
        self.resolution = int(resolution or self.default_resolution())
        if self.resolution < self.patch:
            raise SpatialProbeError(f"{self.family}: resolution {self.resolution} is below the patch size {self.patch}")
        self.layout = anyres_layout(self.resolution, self.tile, self.patch, self.pinpoints)
        self.prompt = self.prompt_for(DESCRIBE)

    def _check_processor(self) -> None:
        own = [list(map(int, p)) for p in self.processor.image_processor.image_grid_pinpoints]
        if own != self.pinpoints:
            raise SpatialProbeError(f"{self.family} {self.name_or_path!r}: processor grid pinpoints {own} differ "
                                    f"from the model's {self.pinpoints}")
        if self.model.config.vision_feature_select_strategy != "default":
            # "full" keeps CLS in every tile, which pack_image_features cannot lay out for a CLIP tower
            raise SpatialProbeError(f"{self.family}: only vision_feature_select_strategy='default' is supported")

    def default_resolution(self) -> int:
        """The largest square pinpoint: a square image fills it exactly, so nothing is padded or unpadded."""
        squares = [h for h, w in self.pinpoints if h == w]
        return max(squares) if squares else self.tile

    def prompt_for(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(message, add_generation_prompt=True)
        return FALLBACK_PROMPT.format(question).replace("<image>", self.processor.image_token)

    @property
    def tower(self) -> torch.nn.Module:
        tower = self.unwrapped_model.model.vision_tower
        return getattr(tower, "vision_model", tower)

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        # the projector runs per tile; to_features packs its output exactly as pack_image_features does
        return standard_stages(self.tower.embeddings, self.tower.encoder.layers,
                               {"out": self.unwrapped_model.model.multi_modal_projector},
                               self.unwrapped_model.model.language_model.layers)

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        config = self.model.config
        return {"resize": "whole image to a square, bicubic, no crop; then the processor's anyres tiling",
                "resolution": self.resolution, "tile": self.tile, "patch_size": self.patch,
                "grid_pinpoints": self.pinpoints, "tiles": self.layout.tiles,
                "mosaic_tokens": list(self.layout.mosaic_shape),
                "vision_feature_layer": config.vision_feature_layer,
                "vision_feature_select_strategy": config.vision_feature_select_strategy,
                "prompt": self.prompt,
                "image_mean": list(map(float, image_processor.image_mean)),
                "image_std": list(map(float, image_processor.image_std))}

    def processor_inputs(self, images: list[Image.Image], prompts: list[str]):
        # the anyres tiles come out at tile size already: no further resize or centre crop
        return self.processor(text=prompts, images=resize_whole(images, self.resolution), return_tensors="pt",
                              images_kwargs={"do_resize": False, "do_center_crop": False})

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Batch]:
        inputs = self.processor_inputs(images, [self.prompt] * len(images))
        expected = (len(images), self.layout.tiles, 3, self.tile, self.tile)
        if tuple(inputs["pixel_values"].shape) != expected:
            raise RuntimeError(f"{self.label}: processor made tiles {tuple(inputs['pixel_values'].shape)}, "
                               f"expected {expected}")
        is_image = inputs["input_ids"] == self.model.config.image_token_id
        if not (is_image.sum(1) == len(self.layout.is_newline)).all():
            raise SpatialProbeError(f"{self.label}: the processor writes {is_image.sum(1).tolist()} image tokens, "
                                    f"the model packs {len(self.layout.is_newline)} (check the processor's "
                                    "patch_size and num_additional_image_tokens=1 for CLS)")
        positions = token_positions(is_image)
        return self.move_inputs(inputs), Batch(len(images), positions)

    def _in_llm_order(self, per_tile: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """[images * tiles, side^2, C] -> tokens in the LLM's order and the tokens unpadding drops."""
        flat = per_tile.reshape(batch.images, self.layout.tiles * per_tile.shape[1], per_tile.shape[-1])
        return flat[:, self.layout.order.to(flat.device)], flat[:, self.layout.dropped.to(flat.device)]

    def to_features(self, stage: str, raw: torch.Tensor, batch: Batch) -> TokenFeatures:
        footprints = self.layout.footprints.expand(batch.images, -1, -1).contiguous()
        if stage.startswith("llm."):
            at_images = gather_tokens(raw, batch.image_positions).float()
            newline = self.layout.is_newline.to(raw.device)
            return TokenFeatures(at_images[:, ~newline], footprints, None, {"newline": at_images[:, newline]})
        if stage == "projector.out":
            tokens, _ = self._in_llm_order(raw, batch)
            rows = self.layout.mosaic_shape[0]
            newline = self.unwrapped_model.model.image_newline.float().expand(batch.images, rows, -1).to(raw.device)
            return TokenFeatures(tokens.float(), footprints, None, {"newline": newline})
        lead = raw.shape[1] - self.layout.side ** 2  # CLS
        tokens, dropped = self._in_llm_order(raw[:, lead:], batch)
        extra = {"cls": raw[:, :lead].reshape(batch.images, -1, raw.shape[-1]).float()}
        if dropped.shape[1]:
            extra["padding"] = dropped.float()
        return TokenFeatures(tokens.float(), footprints, None, extra)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers (one image and question at a time: no padding to get wrong)."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self.move_inputs(self.processor_inputs([image], [self.prompt_for(question)]))
            replies.append(self.greedy_reply(inputs, max_new_tokens))
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.llava_next import save_tiny_llava_next

        save_tiny_llava_next(Path(path), seed)
