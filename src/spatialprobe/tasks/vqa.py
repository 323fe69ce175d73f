"""The `vqa` task: generated questions asked of every configured model that can answer (VLMs).

A model job: the model's own greedy answers, exact match of the first word, with a bootstrap
interval and the best constant answer per question type as the floor. `vqa_relative`, each
model's accuracy over the baseline's, is a row between models made at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext
from .speed import speed_baseline


@dataclass(frozen=True)
class VqaJob:
    spec: object
    config: object
    model: object  # jobs.RunInfo
    ctx: PlanContext

    def run(self, backbone) -> list[dict]:
        from pathlib import Path

        from ..vqa import benchmark_records, load_benchmark, vqa_records

        if not hasattr(backbone, "answer"):  # a vision encoder: no language head to ask
            return []
        config = self.config
        run = self.model
        tuned = {"base_model": run.base.name} if getattr(run, "base", None) else {}  # Mod C's semantic guard
        rows = vqa_records(backbone, self.ctx.data.split("train"), self.ctx.data.split("test"), config.bootstrap,
                           config.seed, config.vqa_questions)
        if config.vqa_benchmark is not None:
            rows += benchmark_records(backbone, load_benchmark(config.vqa_benchmark), Path(config.vqa_benchmark).name,
                                      config.bootstrap, config.seed, config.vqa_questions)
        return [{**r, "model": run.name, "label": run.label, "family": run.family,
                 "control": run.variant, "variant": run.variant, "seed": config.seed, **tuned} for r in rows]


class VqaTask(NoJobs):
    name = "vqa"

    def model_jobs(self, run, ctx: PlanContext) -> list:
        # configured models, and their Mod C variants: the semantic guard asks both the same questions
        asked = run.variant == "none" or getattr(run, "base", None) is not None
        return [VqaJob(run.spec, ctx.config, run, ctx)] if asked else []

    def finalize(self, rows: list[dict], ctx: PlanContext) -> list[dict]:
        from ..vqa import relative_records

        return relative_records(rows, speed_baseline(ctx.config))

    def section(self, manifest: dict, results: list[dict]) -> str:
        return ('<h2>Semantic check</h2><p class="note">Generated questions about colour, shape, count and relative '
                "position, answered with each VLM's own generate; exact match of the first word (proposal section 7.3: "
                "&gt; 0.6 and at least 95% of the baseline). floor: the best constant answer per question type. Rows "
                "with questions: benchmark answer the run's vqa_benchmark folder, scored as VQAv2 scores (floor: the "
                "best single answer to every question).</p>"
                f"{results_table([r for r in results if r.get('task') == self.name])}")


TASK = VqaTask()
