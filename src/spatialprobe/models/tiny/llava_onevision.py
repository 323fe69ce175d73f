"""A tiny random-initialized LLaVA-OneVision (SigLIP tower + Qwen2, bilinear 2x pooling of video frames) with its
processors and a small tokenizer, built offline.

Sizes: 112-px tiles of 14-px patches (8x8 tokens per tile or frame, 4x4 per frame after the pooling); grid
pinpoints are multiples of the tile, so a 224-px square image is one base tile plus 2x2 high-resolution tiles
(a 16x16 mosaic, below anyres_max_9's limit: no mosaic interpolation).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

TILE, PATCH = 112, 14
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
WORDS = ["user", "assistant", "Describe", "the", "image", "video", ".", "What", "colour", "shape", "is", "a", "?",
         "red", "green", "blue", "circle", "square", "triangle", "yes", "no", "\n", "[UNK]"]
# the llava-hf OneVision (Qwen2) template: "<|im_start|>user <image>\n{text}<|im_end|>\n<|im_start|>assistant\n"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_config(vocab: dict[str, int]):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                patch_size=PATCH, image_size=TILE)
    text = Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"],
                       pad_token_id=vocab["<|endoftext|>"])
    # as the llava-hf OneVision checkpoints: the whole SigLIP sequence ("full", it has no CLS), anyres_max_9
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                                video_token_index=vocab["<video>"], image_grid_pinpoints=PINPOINTS,
                                vision_feature_layer=-1, vision_feature_select_strategy="full",
                                vision_aspect_ratio="anyres_max_9")


def save_tiny_llava_onevision(path: Path, seed: int = 0) -> None:
    from transformers import (LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
                              LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    torch.manual_seed(seed)
    tokenizer, vocab = tiny_tokenizer()
    LlavaOnevisionForConditionalGeneration(tiny_config(vocab)).save_pretrained(path)
    size = {"height": TILE, "width": TILE}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS)
    LlavaOnevisionProcessor(image_processor=image_processor, video_processor=LlavaOnevisionVideoProcessor(size=size),
                            tokenizer=tokenizer, num_image_tokens=(TILE // PATCH) ** 2,
                            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                            chat_template=CHAT_TEMPLATE).save_pretrained(path)
