"""Where Mod C puts its LoRA adapters, per model family: the vision encoder's attention and MLP projections.

`target_modules` is a regex (peft matches it against each module's full dotted name), anchored on the
vision blocks, so the merger and the LLM are never wrapped: they stay frozen and bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpatialProbeError


@dataclass(frozen=True)
class VisionLora:
    """One family's LoRA placement: the peft `target_modules` regex and the stage the objective reads."""

    target_modules: str
    default_stage: str  # the tuned stage when the caller names none (the last vision block)


#: family -> where its LoRA goes. Qwen2.5-VL: every block's attn.qkv, attn.proj and gated MLP projections.
VISION_LORA = {
    "qwen2_5_vl": VisionLora(r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))",
                             "vision.block.-1"),
}


def vision_lora(family: str) -> VisionLora:
    """The family's LoRA placement; a family without one is one line naming what Mod C supports."""
    if family not in VISION_LORA:
        raise SpatialProbeError(f"model family {family!r} cannot be fine-tuned: Mod C supports: "
                                f"{', '.join(sorted(VISION_LORA))}")
    return VISION_LORA[family]
