"""Progress that survives logs: live bars in a terminal, one plain line per finished job elsewhere.

In a terminal a rich progress bar shows every job. Outside one (a batch system's log file, CI,
`| tee`) bars either vanish or flood the log, so each finished job prints one line instead: what
finished, how many of how many, and the time since the run started.
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class JobProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=False) if console.is_terminal else None
        self.tasks: dict[int, tuple[str, int]] = {}

    def __enter__(self) -> "JobProgress":
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def say(self, text: str) -> None:
        """A milestone, printed in a terminal and in logs alike."""
        self.console.print(escape(text), highlight=False, soft_wrap=True)

    def add(self, description: str, total: int) -> int:
        number = self.bar.add_task(escape(description), total=total) if self.bar else len(self.tasks)
        self.tasks[number] = (description, total)
        return number

    def done(self, task: int, completed: int, detail: str = "") -> None:
        """`completed` of the task's jobs have finished (`detail` names the last one)."""
        if self.bar:
            self.bar.update(task, completed=completed)
            return
        description, total = self.tasks[task]
        what = f" ({detail})" if detail else ""
        self.say(f"{description}: {completed}/{total}{what} [{self.elapsed()} elapsed]")
