"""A tiny Qwen2.5-VL taught to answer the generated shape and colour questions, so that the semantic guard
has answers to compare before and after Mod C (a random tiny model answers none, and 0 over 0 is no ratio).

The real architecture and loading path, its weights trained here for a few seconds: every parameter, with
the language-model loss on the answer's tokens only, the prompt exactly as `Qwen25VLBackbone.answer` builds
it. The tiny tokenizer spells circle, square, triangle, red, green and blue (counts are [UNK]), so only shape
and colour questions with those answers are taught."""
from __future__ import annotations

from pathlib import Path

import torch


def teachable(question, vocab: dict[str, int]) -> bool:
    return question.kind in ("shape", "colour") and question.answer in vocab


def teach_to_answer(source: str | Path, target: str | Path, data, steps: int = 150, lr: float = 2e-3,
                    resolution: int = 112, seed: int = 0) -> Path:
    """Train the tiny checkpoint at `source` on the questions of COCO split `data`; save it to `target`."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from spatialprobe.models.qwen2_5_vl import QUESTION, resize_whole
    from spatialprobe.vqa import make_questions

    processor = AutoProcessor.from_pretrained(source)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source)
    vocab = processor.tokenizer.get_vocab()
    questions = [q for q in make_questions(data) if teachable(q, vocab)]
    examples = [example(processor, QUESTION.format(q.text), f"{q.answer}<|im_end|>",
                        resize_whole([data.load_image(q.image)], resolution)) for q in questions]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        if step % len(examples) == 0:  # a seeded pass over the questions in a new order
            order = torch.randperm(len(examples), generator=generator).tolist()
        loss = model(**examples[order[step % len(examples)]]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return Path(target)


def example(processor, prompt: str, answer: str, images) -> dict:
    """Inputs of prompt + answer with labels on the answer's tokens only (-100 elsewhere)."""
    whole = processor(text=[prompt + answer], images=images, return_tensors="pt", images_kwargs={"do_resize": False})
    prompt_length = processor(text=[prompt], images=images, return_tensors="pt",
                              images_kwargs={"do_resize": False})["input_ids"].shape[1]
    labels = whole["input_ids"].clone()
    labels[:, :prompt_length] = -100
    return {**whole, "labels": labels}
