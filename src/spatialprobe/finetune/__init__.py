"""Mod C: LoRA fine-tuning of a VLM's vision encoder on a spatial objective, and the `lora:<id>` variant.

- `finetune`, `FinetuneBudget`, `FinetuneResult`: seeded, resumable training on the train split, the adapter
  chosen on val and saved to `<folder>/adapter` with its training record.
- `vision_lora`, `VISION_LORA`: where each supported family's LoRA goes (vision blocks only).
- `apply_adapter`, `adapter_fingerprint`: loading a trained adapter onto a backbone, and its identity for keys.
"""
from .targets import VISION_LORA, VisionLora, vision_lora
from .train import RECORD_NAME, FinetuneBudget, FinetuneResult, finetune
from .variant import adapter_fingerprint, apply_adapter

__all__ = ["RECORD_NAME", "VISION_LORA", "FinetuneBudget", "FinetuneResult", "VisionLora", "adapter_fingerprint",
           "apply_adapter", "finetune", "vision_lora"]
