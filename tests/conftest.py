import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small emoji-scenes build shared by the tests that need real files."""
    from mmtlab.data.emoji_scenes import build_emoji_scenes

    out = tmp_path_factory.mktemp("data") / "emoji-scenes"
    build_emoji_scenes(out, size=256, eval_size=40, heldout_size=10, seed=0, progress=False)
    return out


def invoke(*args) -> str:
    """Run `mmtlab ARGS...` in-process; it must succeed. Returns what it printed."""
    from typer.testing import CliRunner

    from mmtlab.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def tiny_run_config(data_root, **train):
    """A run config small enough to train in a second or two."""
    return {
        "seed": 0,
        "data": {"root": str(data_root)},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "layout": "modality_specific",
            "width": 32,
            "depth": 2,
            "heads": 2,
            "embed_dim": 16,
            "image": {"size": 64, "patch": 16},
            "text": {"max_len": 24},
        },
        "objectives": {"contrastive": 1.0},
        "train": {
            "steps": 6,
            "batch_size": 16,
            "lr": 1e-3,
            "warmup_steps": 2,
            "checkpoint_every": 3,
            "log_every": 1,
            **train,
        },
        "eval": {"batch_size": 32},
    }


def cli_error(monkeypatch, capsys, *args):
    """Run `mmtlab ARGS` through cli.main; return (exit code, the error lines it printed last).
    (What came before, e.g. "resuming ..." and the progress bar, is not the error.)"""
    import sys

    from mmtlab.cli import main

    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps at the terminal width: one logical line
    monkeypatch.setattr(sys, "argv", ["mmtlab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    first = max(i for i, line in enumerate(lines) if line.startswith("error:"))
    return exit_.value.code, "\n".join(lines[first:])
