"""The `speed` task: every configured model timed on the same test images, and its ratio to the baseline.

A model job (it needs the loaded model): the median of at least 5 timed passes after a warm-up,
read to the model's deepest stage. The ratios to the baseline are rows between models, made once
every model is timed. Controls are not timed.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext


@dataclass(frozen=True)
class SpeedJob:
    spec: object  # the model spec the executor loads
    config: object
    model: object  # jobs.RunInfo
    ctx: PlanContext

    def run(self, backbone) -> list[dict]:
        from ..speed import measure_speed

        test = self.ctx.data.split("test")
        timed = [test.load_image(i) for i in range(min(self.config.speed_images, len(test)))]
        speed = measure_speed(backbone, timed, self.config.batch_size)
        return [{"model": self.model.name, "task": "speed", "metric": "timing", "timing": speed,
                 "label": self.model.label}]


def speed_baseline(config) -> str | None:
    """The model speed ratios and relative VQA are taken against: configured, else the first Qwen2.5-VL."""
    if config.decision.baseline:
        return config.decision.baseline
    return next((m.name for m in config.models if m.family == "qwen2_5_vl"), None)


class SpeedTask(NoJobs):
    name = "speed"

    def model_jobs(self, run, ctx: PlanContext) -> list:
        return [SpeedJob(run.spec, ctx.config, run, ctx)] if run.variant == "none" else []

    def finalize(self, rows: list[dict], ctx: PlanContext) -> list[dict]:
        """The timings become rows: images/s, peak memory and the ratio to the baseline."""
        from ..speed import speed_records

        timings = [r for r in rows if r.get("task") == "speed" and r.get("metric") == "timing"]
        speeds = {r["model"]: r["timing"] for r in timings}
        labels = {r["model"]: r["label"] for r in timings}
        return [{**r, "label": labels[r["model"]], "control": "none", "variant": "none", "seed": ctx.config.seed}
                for r in speed_records(speeds, speed_baseline(ctx.config))]

    def section(self, manifest: dict, results: list[dict]) -> str:
        return ('<h2>Speed and memory</h2><p class="note">Each configured model read to its deepest stage on the same '
                "test images, batch size and hardware: the median of at least 5 timed repeats after a warm-up; "
                "interval: the interquartile range (IQR) of the repeats, not a 95% interval. speed_ratio = median time "
                "per image over the baseline model's, interval: IQR over all pairs of repeats; the baseline's own "
                f"ratio is 1 by definition, with no interval.</p>{results_table([r for r in results if r.get('task') == self.name])}")


TASK = SpeedTask()
