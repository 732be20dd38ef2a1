"""Command line: `mmtlab demo | data build | train | eval | ablate | caption | report | layout | import | export |
finetune | detect`.

The app and its shared pieces are here; the commands are in data.py, run.py (train, demo, study,
report, layout), evaluate.py (eval, caption, ablate), detect.py (finetune detect, eval detect, detect) and hub.py
(import, export)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from mmtlab.config import ConfigError

app = typer.Typer(
    help="mmtlab: build, train, evaluate and diagnose multimodal transformers.\n\n"
    "Start with `mmtlab demo`: it builds the embedded emoji-scenes data, trains a small dual encoder "
    "for a few minutes and reports zero-shot retrieval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text is text: "[path, null, ...]" must not be taken for markup
)
data_app = typer.Typer(
    help="Build datasets (the embedded emoji-scenes) in real formats.", no_args_is_help=True, rich_markup_mode=None
)
eval_app = typer.Typer(
    help="Evaluate a trained run; results go to RUN_DIR/eval/*.json.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
console = Console()


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, no traceback."""


# The commands, registered on `app` by importing their modules (after app, console, UserError exist).
from mmtlab.cli import data, detect, evaluate, hub, run  # noqa: E402,F401


def main() -> None:
    from mmtlab.data.sources import DatasetNotFound
    from mmtlab.eval.runs import EvalError
    from mmtlab.rundir import RunFileError
    from mmtlab.train.checkpoint import CheckpointError
    from mmtlab.train.loop import RunDirError

    errors = (UserError, ConfigError, DatasetNotFound, RunDirError, EvalError, FileNotFoundError, CheckpointError)
    try:
        app()
    except (*errors, RunFileError) as e:
        # escape: a message's [brackets] are text, not markup; soft_wrap: one line however long
        Console(stderr=True, soft_wrap=True, emoji=False).print(
            f"[bold red]error:[/] {escape(str(e))}", highlight=False
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
