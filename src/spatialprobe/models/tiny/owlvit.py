"""Tiny random-initialized OWL-ViT and OWLv2 detectors (a CLIP-like text and vision tower, the detection heads),
with their processors and a word-level stand-in for CLIP's tokenizer, built offline in code."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_WORDS = ["!", "a", "photo", "of", "the", "red", "green", "blue", "circle", "square", "triangle", "object",
              "[UNK]"]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: model class prefix -> the image processor's sizes: 64-px squares (OWLv2 pads to a square and never crops)
IMAGE_PROCESSOR_SIZES = {
    "OwlViT": {"size": {"height": 64, "width": 64}, "crop_size": {"height": 64, "width": 64}},
    "Owlv2": {"size": {"height": 64, "width": 64}},
}


def tiny_clip_tokenizer():
    """A word-level stand-in for CLIP's BPE with its conventions: "!" (id 0) pads, EOS has the highest id
    (the text tower pools at the argmax id), every query is BOS ... EOS, 16 tokens long."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TINY_WORDS + [BOS, EOS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([BOS, EOS])
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                           special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token="!",
                                        unk_token="[UNK]", model_max_length=16)
    return tokenizer, vocab


def tiny_owl_config(config_class, vocab: dict[str, int]):
    return config_class(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": vocab["!"],
                     "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]},
        # 64 px at patch 8: an 8x8 patch grid
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 8},
        projection_dim=32,  # the class head compares text embeds with patches mapped to the text width
    )


def save_tiny_owl(path: Path, seed: int, model_class_name: str) -> None:
    """`model_class_name` is OwlViTForObjectDetection or Owlv2ForObjectDetection; its processors share the prefix."""
    import transformers

    prefix = model_class_name.removesuffix("ForObjectDetection")
    model_class = getattr(transformers, model_class_name)
    image_processor = getattr(transformers, f"{prefix}ImageProcessor")(**IMAGE_PROCESSOR_SIZES[prefix])
    torch.manual_seed(seed)
    tokenizer, vocab = tiny_clip_tokenizer()
    model_class(tiny_owl_config(model_class.config_class, vocab)).save_pretrained(path)
    getattr(transformers, f"{prefix}Processor")(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
