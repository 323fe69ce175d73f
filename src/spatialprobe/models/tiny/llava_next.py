"""A tiny random-initialized LLaVA-NeXT (CLIP tower + Llama) with its processor and a small tokenizer, built offline.

Sizes: 56-px tiles of 14-px patches (4x4 tokens per tile) and grid pinpoints that are multiples of the tile, so a
112-px square image is one base tile plus 2x2 high-resolution tiles: 16 + 64 image tokens and 8 newline tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

TILE, PATCH = 56, 14
PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
SPECIAL = ["<s>", "</s>", "<pad>", "<image>"]
WORDS = ["USER", "ASSISTANT", ":", "Describe", "the", "image", ".", "What", "colour", "shape", "is", "a", "?",
         "red", "green", "blue", "circle", "square", "triangle", "yes", "no", "[UNK]"]
# the llava-hf vicuna template: "USER: <image>\n{text} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(vocab: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    # 3 blocks, so the penultimate block LLaVA feeds its LLM (vision_feature_layer=-2) is not the last one
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              patch_size=PATCH, image_size=TILE, projection_dim=16)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                           image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                           vision_feature_select_strategy="default")


def save_tiny_llava_next(path: Path, seed: int = 0) -> None:
    from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    torch.manual_seed(seed)
    tokenizer, vocab = tiny_tokenizer()
    LlavaNextForConditionalGeneration(tiny_config(vocab)).save_pretrained(path)
    # the processor's defaults (224-px crops, 336-based pinpoints) do not fit together: make them consistent
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                              image_grid_pinpoints=PINPOINTS)
    # num_additional_image_tokens=1: the CLS token, which the "default" strategy then drops again
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       chat_template=CHAT_TEMPLATE).save_pretrained(path)
