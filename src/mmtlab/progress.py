"""Progress bars with throughput and ETA for every long job (rich, on stderr). When stderr is not a
terminal (a log file, a pipe, a batch job) rich draws nothing until the end, so the same calls print
plain lines instead: one every PLAIN_EVERY seconds and one at the end, with rate and ETA."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
stderr = Console(stderr=True)


PLAIN_EVERY = 30.0  # seconds between plain progress lines


class PlainProgress:
    """The subset of rich's Progress that mmtlab uses, printing plain lines (see module doc)."""

    def __init__(self, console: Console, every: float = PLAIN_EVERY):
        self.console, self.every = console, every
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for task in self.tasks.values():
            if not task["closed"]:
                self._print(task)
                task["closed"] = True

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        tid = len(self.tasks)
        now = time.monotonic()
        self.tasks[tid] = dict(description=description, total=total, completed=completed, start=completed,
                               t0=now, last=now, fields=fields, closed=False)  # fmt: skip
        return tid

    def update(self, task_id: int, *, completed=None, advance=None, total=None, **fields) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if total is not None:
            task["total"] = total
        task["fields"].update(fields)
        now = time.monotonic()
        if now - task["last"] >= self.every:
            task["last"] = now
            self._print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task: dict) -> None:
        done, total = task["completed"], task["total"]
        elapsed = time.monotonic() - task["t0"]
        rate = (done - task["start"]) / elapsed if elapsed > 0 else 0.0
        parts = [f"{task['description']} {done:,.0f}" + (f"/{total:,.0f} ({100 * done / total:.0f}%)" if total else "")]
        parts += [str(v) for v in task["fields"].values() if v not in ("", None)]
        parts.append(f"{elapsed:,.0f} s")
        if total and rate > 0:
            parts.append(f"ETA {(total - done) / rate:,.0f} s")
        self.console.print(" | ".join(parts), highlight=False, markup=False)


def _bar(console: Console | None, *columns, transient: bool = False):
    console = console or stderr
    if not console.is_terminal:
        return PlainProgress(console)
    return Progress(*columns, console=console, transient=transient)


def progress_bar(console: Console | None = None, transient: bool = True, columns: tuple | None = None):
    """Count, percentage, elapsed time and ETA (or `columns`), removed from the screen when done."""
    default = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    return _bar(console, *(columns or default), transient=transient)


def training_progress(console: Console | None = None):
    """Steps done, a free-text field (loss, pairs/s) and ETA; stays on screen after training."""
    return _bar(
        console,
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
