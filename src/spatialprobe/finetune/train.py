"""Mod C training: LoRA on the vision encoder, trained on the spatial objective with a fixed, seeded budget.

Resumable exactly as `bridging.train` is (its atomic checkpoint helpers, reused): every `checkpoint_every`
steps the trainable weights (LoRA + head), the optimizer, the step, both curves, the best-on-val weights,
the minibatch generator and the torch RNG (LoRA dropout draws from it) go atomically into
`<folder>/checkpoints`, and a call starts from the newest one, so a killed run resumed retraces the
uninterrupted run bit for bit (same device and library versions).

The split is honest by construction: `finetune` takes the training and validation splits only. The val
loss is measured at step 0 and at every checkpoint; the adapter kept is the one of the lowest val loss.
On CUDA the steps run under bf16 autocast with gradient checkpointing (recorded in the result); the CPU
runs float32 without them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..bridging.train import newest_checkpoint, save_checkpoint
from ..errors import SpatialProbeError
from ..files import install_folder
from ..probes.footprints import token_coverage
from .objective import LossWeights, TokenHead, mean_colours, spatial_loss, target_mask
from .targets import vision_lora

#: the marker of a complete adapter folder, and the training record it holds
RECORD_NAME = "spatialprobe-finetune.json"


@dataclass(frozen=True)
class FinetuneBudget:
    """The fixed, seeded budget of one Mod C fine-tune (from the config)."""

    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    weight_decay: float = 0.0
    distill_weight: float = 0.0  # MSE toward the frozen original's tokens at the tuned stage
    reconstruction_weight: float = 0.0  # each token's mean colour; off by default
    seed: int = 0
    checkpoint_every: int = 50  # also how often the val loss is measured

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "rank", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpatialProbeError(f"finetune budget: {name} must be a whole number >= 1, got {value!r}")
        for name in ("lr", "alpha", "weight_decay", "distill_weight", "reconstruction_weight"):
            if getattr(self, name) < 0:
                raise SpatialProbeError(f"finetune budget: {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise SpatialProbeError(f"finetune budget: dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(reconstruction=self.reconstruction_weight, distill=self.distill_weight)


@dataclass
class FinetuneResult:
    """adapter: the folder `PeftModel.from_pretrained` reads (the lowest-val-loss weights); train_losses: every
    step's loss from step 1; val_losses: (step, val loss) from step 0; chosen_step: the step kept."""

    adapter: Path
    stage: str
    train_losses: list[float]
    val_losses: list[tuple[int, float]]
    chosen_step: int
    steps_done: int
    resumed_from: int
    mixed_precision: bool
    gradient_checkpointing: bool
    seconds: float = field(default=0.0, compare=False)


@dataclass
class Run:
    """What one training call carries between its parts."""

    backbone: object
    head: TokenHead
    stage: str
    budget: FinetuneBudget
    cuda: bool

    @property
    def peft_model(self):
        return self.backbone.model

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """LoRA and head parameters by name (the only weights that change)."""
        lora = {f"lora.{n}": p for n, p in self.peft_model.named_parameters() if p.requires_grad}
        return lora | {f"head.{n}": p for n, p in self.head.named_parameters()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.trainable().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.trainable().items():
                p.copy_(weights[name])


def wrap_with_lora(backbone, budget: FinetuneBudget) -> None:
    """Put LoRA on the family's vision-block projections (seeded init); every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    placement = vision_lora(backbone.family)
    config = LoraConfig(r=budget.rank, lora_alpha=budget.alpha, lora_dropout=budget.dropout,
                        target_modules=placement.target_modules)
    torch.manual_seed(budget.seed)
    backbone.model = get_peft_model(backbone.model, config)


def batch_loss(run: Run, images, data, indices, grad: bool) -> torch.Tensor:
    """The objective on one batch of `data`'s images `indices` (with autograd when `grad`)."""
    weights = run.budget.weights
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.cuda):
        feats = run.backbone.forward_features(images, [run.stage], grad=grad)[run.stage]
        prediction = run.head(feats.tokens).float()
    footprints = feats.footprints.detach().cpu().float()
    masks = torch.stack([target_mask(data, i) for i in indices])
    coverage = token_coverage(masks, footprints).to(prediction.device)
    colours = mean_colours(images, footprints).to(prediction.device) if weights.reconstruction else None
    original = original_tokens(run, images) if weights.distill else None
    tokens = feats.tokens.float() if weights.distill else None
    return spatial_loss(prediction, coverage, colours, tokens, original, weights)


def original_tokens(run: Run, images) -> torch.Tensor:
    """The frozen original's tokens at the tuned stage: the same model with its adapter switched off (no copy).
    Cloned out of inference mode so the loss may save them for its backward pass."""
    with run.peft_model.disable_adapter(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.cuda):
        tokens = run.backbone.forward_features(images, [run.stage], grad=False)[run.stage].tokens
    return tokens.float().clone()


def val_loss(run: Run, val) -> float:
    """Mean objective over the validation images (eval mode: no dropout, no RNG drawn)."""
    run.peft_model.eval()
    run.head.eval()
    total, size = 0.0, run.budget.batch_size
    for start in range(0, len(val), size):
        indices = list(range(start, min(start + size, len(val))))
        images = [val.load_image(i) for i in indices]
        with torch.no_grad():
            total += float(batch_loss(run, images, val, indices, grad=False)) * len(indices)
    return total / len(val)


def signature(run: Run, base_key: str | None, n_train: int, n_val: int) -> dict:
    """What a checkpoint must match to be resumed: everything of the run but its length."""
    budget = {k: v for k, v in asdict(run.budget).items() if k not in ("steps", "checkpoint_every")}
    shapes = {name: list(p.shape) for name, p in run.trainable().items()}
    return {"budget": budget, "stage": run.stage, "base": base_key, "n_train": n_train, "n_val": n_val,
            "family": run.backbone.family, "shapes": shapes}


def stage_tokens(backbone, stage: str, image) -> torch.Tensor:
    """One image's tokens at the stage: their width sizes the head, their device places it (with a device_map
    the stage's device, not necessarily the configured one)."""
    return backbone.forward_features([image], [stage])[stage].tokens


def check_splits(train, val) -> None:
    for name, split in (("train", train), ("val", val)):
        if len(split) == 0:
            raise SpatialProbeError(f"finetune: the {name} split has no images")


def finetune(backbone, train, val, budget: FinetuneBudget, folder: str | Path, *, stage: str | None = None,
             base_key: str | None = None, on_step: Callable[[int], None] | None = None) -> FinetuneResult:
    """Fine-tune `backbone`'s vision encoder with LoRA on `train` (choosing on `val`) and save the adapter.

    `backbone` is wrapped in place (its `.model` becomes the PeftModel) and ends in eval mode holding the
    chosen adapter. `train`, `val`: splits with `load_image(i)`, `target(i)` and `len` (`load_coco`).
    `folder` holds `checkpoints/` and, once done, `adapter/` (peft's `save_pretrained`, plus the training
    record `spatialprobe-finetune.json`). `stage`: the tuned stage (default the family's last vision block).
    `on_step(step)` runs after each step and its checkpoint (a test's simulated kill raises there)."""
    placement = vision_lora(backbone.family)  # an unsupported family fails here, before any compute
    check_splits(train, val)
    stage = backbone.resolve_stages([stage or placement.default_stage])[0]
    folder = Path(folder)
    tokens = stage_tokens(backbone, stage, train.load_image(0))
    cuda = tokens.device.type == "cuda"
    wrap_with_lora(backbone, budget)
    head = TokenHead(tokens.shape[-1], colour=budget.reconstruction_weight > 0).to(tokens.device)
    if cuda:  # recomputes block activations in the backward pass: memory for time, on a GPU only
        backbone.unwrapped_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    run = Run(backbone, head, stage, budget, cuda)
    return train_loop(run, train, val, folder, signature(run, base_key, len(train), len(val)), base_key, on_step)


def train_loop(run: Run, train, val, folder: Path, sign: dict, base_key, on_step) -> FinetuneResult:
    budget = run.budget
    optimizer = torch.optim.AdamW(list(run.trainable().values()), lr=budget.lr, weight_decay=budget.weight_decay)
    generator = torch.Generator().manual_seed(budget.seed)
    state = resume(run, optimizer, generator, folder / "checkpoints", sign)
    if state is None:  # a fresh run: the untuned model's val loss is step 0's
        state = {"step": 0, "train_losses": [], "val_losses": [(0, val_loss(run, val))], "best": (0, run.weights())}
    start, began = state["step"], time.perf_counter()
    for step in range(start + 1, budget.steps + 1):
        run.peft_model.train()
        run.head.train()
        indices = torch.randperm(len(train), generator=generator)[: min(budget.batch_size, len(train))].tolist()
        loss = batch_loss(run, [train.load_image(i) for i in indices], train, indices, grad=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["train_losses"].append(float(loss.detach()))
        state["step"] = step
        if step % budget.checkpoint_every == 0 or step == budget.steps:
            checkpoint(run, optimizer, generator, folder / "checkpoints", state, sign, val)
        if on_step is not None:
            on_step(step)
    return finish(run, folder, state, start, base_key, time.perf_counter() - began)


def checkpoint(run: Run, optimizer, generator, checkpoints: Path, state: dict, sign: dict, val) -> None:
    """Measure the val loss, keep the best weights, and write everything atomically."""
    loss = val_loss(run, val)
    state["val_losses"].append((state["step"], loss))
    if loss < min(v for _, v in state["val_losses"][:-1]):
        state["best"] = (state["step"], run.weights())
    save_checkpoint(checkpoints, {
        "step": state["step"], "train_losses": state["train_losses"], "val_losses": state["val_losses"],
        "best": state["best"], "weights": run.weights(), "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(), "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if run.cuda else None, "signature": sign})


def resume(run: Run, optimizer, generator, checkpoints: Path, sign: dict) -> dict | None:
    """The newest checkpoint's state loaded into the run (None when there is none)."""
    path = newest_checkpoint(checkpoints)
    if path is None:
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["signature"] != sign:
        raise SpatialProbeError(f"checkpoint {path} was written by a different fine-tune (model, stage, budget or "
                                f"splits differ): remove {checkpoints} or train into another folder")
    run.load_weights(saved["weights"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["rng"])
    if run.cuda and saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return {"step": saved["step"], "train_losses": list(saved["train_losses"]),
            "val_losses": [tuple(v) for v in saved["val_losses"]], "best": tuple(saved["best"])}


def finish(run: Run, folder: Path, state: dict, start: int, base_key, seconds: float) -> FinetuneResult:
    """Load the best-on-val weights, save the adapter (atomically, with its record), end in eval mode."""
    chosen, best = state["best"]
    run.load_weights(best)
    run.peft_model.eval()
    run.head.eval()
    record = {"base_key": base_key, "family": run.backbone.family, "stage": run.stage,
              "budget": asdict(run.budget), "steps": state["step"], "chosen_step": chosen,
              "val_losses": [list(v) for v in state["val_losses"]], "train_losses": state["train_losses"],
              "mixed_precision": run.cuda, "gradient_checkpointing": run.cuda}

    def build(tmp: Path) -> dict:
        run.peft_model.save_pretrained(tmp)
        return record

    adapter = install_folder(folder / "adapter", RECORD_NAME, build, force=True)
    return FinetuneResult(adapter, run.stage, state["train_losses"], state["val_losses"], chosen, state["step"],
                          start, run.cuda, run.cuda, seconds)
