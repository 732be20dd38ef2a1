"""Study files that would report wrong results or write in the wrong place are refused before
anything is written, by `mmtlab study --dry-run` too (issue 21, item 2)."""

import re
import sys

import pytest
import yaml
from conftest import tiny_run_config

from mmtlab.study import run_study

AXES = {"layout": {"dual": {"model.layout": "modality_specific"}}}

BAD = {
    # two labels, one run directory: one cell's numbers would be shown for both
    "labels_share_a_dir": ({"axes": {"x": {"a/b": {}, "a-b": {}}}}, "cells 'x=a-b' and 'x=a/b' map to the same"),
    "duplicate_seeds": ({"seeds": [0, 0]}, "seeds: \\[0\\] appear more than once"),
    "dotdot_label": ({"axes": {"x": {"..": {}}}}, "label '..'"),
    "dot_label": ({"axes": {"x": {".": {}}}}, "label '.'"),
    "name_escapes": ({"name": "../../escaped"}, "name: '../../escaped'"),
    "name_absolute": ({"name": "/tmp/mmtlab-absolute-study"}, "name: '/tmp/mmtlab-absolute-study'"),
    "pretrain_name_escapes": ({"pretrain": {"..": {"base": "base.yaml"}}}, "pretrain: run name '..'"),
    "eval_unknown": ({"evals": {"retreival": {}}, "metrics": ["retreival.t2i_r1"]}, "retreival"),
    "eval_param_typo": ({"evals": {"retrieval": {"splt": "test"}}}, "evals.retrieval: .*'splt'.*parameters: split"),
    "eval_param_type": ({"evals": {"retrieval": {"max_images": "ten"}}}, "evals.retrieval: max_images='ten'"),
    "eval_param_reserved": ({"evals": {"retrieval": {"progress": False}}}, "'progress' is set by the study"),
    "data_arg_typo": ({"data": {"data/extra": {"sise": 100}}}, "data.data/extra: .*'sise'.*parameters: size"),
    "data_arg_type": ({"data": {"data/extra": {"size": "big"}}}, "data.data/extra: size='big'"),
    "cell_bad_field": ({"axes": {"lr": {"neg": {"train.lr": -1}}}}, "lr=neg.*train.lr"),
    "cell_bad_layout_args": (
        {"axes": {"x": {"mixed": {"model.layout": "mixed", "model.layout_args": {"k": 9}}}}},
        "study cell 'x=mixed': model.layout_args: mixed layout needs 0 <= k <= depth",
    ),
    "cell_unknown_override": ({"axes": {"x": {"a": {"train.lrr": 1}}}}, "train.lrr: unknown field"),
    "no_seeds": ({"seeds": []}, "seeds"),
    "metric_of_no_eval": ({"metrics": ["mlm.bits"]}, "mlm"),
}


def write(tmp_path, data_root, **extra):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_run_config(data_root, steps=2)))
    spec = {
        "name": "checks",
        "base": "base.yaml",
        "axes": AXES,
        "evals": {"retrieval": {"split": "test"}},
        "metrics": ["retrieval.t2i_r1"],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_is_one_line_exit_2_and_writes_nothing(case, dry_run, tmp_path, tiny_data, monkeypatch, capsys):
    from mmtlab.cli import main

    extra, message = BAD[case]
    (tmp_path / "spec").mkdir()
    path = write(tmp_path / "spec", tiny_data, **extra)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the default output folder is runs/studies/<name> under here
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(sys, "argv", ["mmtlab", "study", str(path), *(["--dry-run"] if dry_run else [])])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(path) in err
    assert re.search(message, err), err
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in (tmp_path / "spec").iterdir()) == [
        "base.yaml",
        "study.yaml",
    ]
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_good_study_with_eval_and_data_arguments_passes_the_dry_run(tmp_path, tiny_data):
    path = write(
        tmp_path,
        tiny_data,
        seeds=[0, 1],
        axes={"x": {"a/b": {}, "c": {}}},
        evals={"retrieval": {"split": "val", "max_images": 10, "examples": False, "data": "{pretrain.p}"}},
        data={str(tmp_path / "extra"): {"size": 100, "pretrain_styles": {"alt_text": 1.0}}},
        pretrain={"p": {"base": "base.yaml"}},
    )
    assert run_study(path, tmp_path / "out", dry_run=True) == tmp_path / "out"
    assert not (tmp_path / "out").exists() and not (tmp_path / "extra").exists()
