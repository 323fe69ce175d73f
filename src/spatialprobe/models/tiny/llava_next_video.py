"""A tiny random-initialized LLaVA-NeXT-Video (CLIP tower + Llama, 2x2 average pooling of video frames) with its
processors and a small tokenizer, built offline.

Sizes: 112-px tiles of 14-px patches (8x8 tokens per tile or frame, 4x4 per frame after the 2x2 pooling); grid
pinpoints are multiples of the tile, so a 224-px square image is one base tile plus 2x2 high-resolution tiles.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .llava_next import WORDS
from .tokenizer import word_level_tokenizer

TILE, PATCH, POOL = 112, 14, 2
PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
SPECIAL = ["<s>", "</s>", "<pad>", "<image>", "<video>"]
# the llava-hf LLaVA-NeXT-Video template: "USER: <video>\n{text} ASSISTANT:" (or <image>)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS + ["video"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(vocab: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig

    # 3 blocks, so the penultimate block the projector reads (vision_feature_layer=-2) is not the last one
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              patch_size=PATCH, image_size=TILE, projection_dim=16)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    return LlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                                video_token_index=vocab["<video>"], image_grid_pinpoints=PINPOINTS,
                                vision_feature_layer=-2, vision_feature_select_strategy="default",
                                spatial_pool_mode="average", spatial_pool_stride=POOL)


def save_tiny_llava_next_video(path: Path, seed: int = 0) -> None:
    from transformers import (LlavaNextImageProcessor, LlavaNextVideoForConditionalGeneration,
                              LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor)

    torch.manual_seed(seed)
    tokenizer, vocab = tiny_tokenizer()
    LlavaNextVideoForConditionalGeneration(tiny_config(vocab)).save_pretrained(path)
    size, crop = {"shortest_edge": TILE}, {"height": TILE, "width": TILE}
    image_processor = LlavaNextImageProcessor(size=size, crop_size=crop, image_grid_pinpoints=PINPOINTS)
    video_processor = LlavaNextVideoVideoProcessor(size=size, crop_size=crop)
    # num_additional_image_tokens=1: the CLS token, which the "default" strategy then drops again
    LlavaNextVideoProcessor(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
                            patch_size=PATCH, vision_feature_select_strategy="default",
                            num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE).save_pretrained(path)
