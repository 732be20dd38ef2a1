"""Progress off a terminal: plain lines with counts, rate and ETA (a piped log is never silent)."""

import io

from rich.console import Console

from mmtlab.progress import PlainProgress, progress_bar, training_progress


def test_progress_off_a_terminal_prints_plain_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    assert isinstance(training_progress(console), PlainProgress)
    assert isinstance(progress_bar(console), PlainProgress)
    bar = PlainProgress(console, every=0.0)
    with bar:
        task = bar.add_task("training", total=10, completed=2, info="")
        bar.update(task, completed=6, info="loss 1.234 | 50 pairs/s")
        bar.advance(task, 4)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("training 6/10 (60%) | loss 1.234 | 50 pairs/s |") and "ETA" in lines[0]
    assert lines[-1].startswith("training 10/10 (100%)")
    assert "\x1b" not in out.getvalue()  # no terminal escapes in a log


def test_progress_on_a_terminal_is_a_rich_bar():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(training_progress(console), PlainProgress)


def test_help_text_keeps_its_brackets():
    from conftest import invoke

    out = invoke("data", "interleaved", "--help")
    assert '{"images": [path,' in " ".join(out.split())
