import json
import math
import statistics

import pytest
import yaml
from conftest import tiny_run_config

from mmtlab.config import ConfigError
from mmtlab.study import expand, load_study, mean_ci95, run_study
from mmtlab.study.report import write_study_report
from mmtlab.study.runner import StudyStopped, format_mean_ci


def test_mean_ci95_matches_t_formula():
    mean, ci = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert ci == pytest.approx(4.302653 * 1.0 / math.sqrt(3))  # t(0.975, 2 degrees of freedom)
    assert mean_ci95([5.0]) == (5.0, None)  # one seed: no interval, not a zero-width one
    _, ci = mean_ci95([float(i) for i in range(41)])  # 40 degrees of freedom: 2.021, not 1.96
    assert ci / (statistics.stdev(range(41)) / math.sqrt(41)) == pytest.approx(2.021075)


def test_table_cells_keep_small_effects_visible():
    assert format_mean_ci({"mean": 14.64, "ci95": 2.31}) == "14.6 ± 2.3"
    assert format_mean_ci({"mean": -0.02, "ci95": None}) == "-0.02"  # not "-0.0"
    assert format_mean_ci({"mean": 0.5, "ci95": 0.1}, 1) == "0.5 ± 0.1"
    assert format_mean_ci(None) == "–"
    assert format_mean_ci({"mean": 1.0483, "ci95": 0.0051}) == "1.048 ± 0.005"  # not "1.0 ± 0.0"
    assert format_mean_ci({"mean": 21.5, "ci95": 0.0}) == "21.5 ± 0.0"  # identical seeds: an honest zero


def write_study(tmp_path, data, **extra):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_run_config(data, steps=2, checkpoint_every=2)))
    spec = {
        "name": "tiny",
        "base": "base.yaml",
        "seeds": [0, 1],
        "axes": {
            "layout": {"dual": {"model.layout": "modality_specific"}, "asym": {"model.layout": "asym_image_queries"}},
            "lr": {"low": {"train.lr": 1e-4}, "high": {"train.lr": 1e-3}},
        },
        "exclude": [{"layout": "asym", "lr": "high"}],
        "evals": {"retrieval": {"split": "test", "examples": False}},
        "metrics": ["retrieval.t2i_r1", "retrieval.i2t_r10"],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_metric_a_run_lacks_is_left_out_not_an_error():
    from mmtlab.study.runner import metric_value

    # e.g. language-for-vision numbers of a model without a masked-region head
    assert metric_value({"ablation": {"v4l_none": 3}}, "ablation.l4v_none") is None
    assert metric_value({"ablation": {"v4l_none": 3}}, "ablation.v4l_none") == 3.0


def test_a_metric_can_name_a_value_inside_a_nested_result():
    from mmtlab.study.runner import metric_value

    # fewshot.json as a study run stores it: JSON turned the shot counts into strings
    fewshot = {"fewshot": {"classify": {"n": 200, "scores": {"0": 0.14, "8": 0.13}, "metric": "accuracy"}}}
    assert metric_value(fewshot, "fewshot.classify.scores.8") == 0.13
    assert metric_value(fewshot, "fewshot.classify.scores.16") is None  # a shot count not evaluated
    assert metric_value(fewshot, "fewshot.classify.metric") is None  # not a number
    assert metric_value(fewshot, "fewshot.classify.scores") is None  # not a number either
    assert metric_value({"zeroshot": {"seen.top1": 0.5}}, "zeroshot.seen.top1") == 0.5  # a flat key with a dot


def test_column_names_drop_the_evaluation_only_where_that_leaves_them_distinct():
    from mmtlab.study.runner import short_names

    metrics = ["retrieval.t2i_r1", "fewshot.classify.scores.8", "fewshot_blind.classify.scores.8"]
    assert short_names(metrics) == ["t2i_r1", "fewshot.classify.scores.8", "fewshot_blind.classify.scores.8"]


def test_the_blind_control_is_an_evaluation_of_its_own():
    import inspect

    from mmtlab.eval.runs import eval_fewshot
    from mmtlab.evaluate import EVALS

    blind = inspect.signature(EVALS["fewshot_blind"]).parameters
    assert blind["blind"].default is True
    assert set(blind) == set(inspect.signature(eval_fewshot).parameters)  # a study's parameters are checked


def test_paired_differences_pair_by_seed_not_by_position():
    from mmtlab.study.runner import paired_differences

    def row(name, seeds, values):
        return {"name": name, "seeds": len(seeds), "metrics": {"m.x": {"values": values, "seeds": seeds}}}

    base = row("a", [0, 1, 2], [10.0, 20.0, 30.0])
    other = row("b", [0, 2], [13.0, 35.0])  # seed 1 of b lacks the metric
    (p,) = paired_differences([base, other], ["m.x"], [0, 1, 2])
    d = p["metrics"]["m.x"]
    assert d["values"] == [3.0, 5.0] and d["seeds"] == [0, 2] and p["baseline"] == "a"
    assert (d["mean"], d["ci95"]) == mean_ci95([3.0, 5.0])
    # The paired interval ignores what the seeds share: a constant +2 gap has width 0 although
    # each cell alone spans 10 to 30.
    (p,) = paired_differences([base, row("c", [0, 1, 2], [12.0, 22.0, 32.0])], ["m.x"], [0, 1, 2])
    assert p["metrics"]["m.x"]["mean"] == pytest.approx(2.0) and p["metrics"]["m.x"]["ci95"] == pytest.approx(0.0)


def test_contrasts_within_a_cell_pair_its_two_metrics_seed_by_seed():
    from mmtlab.study.runner import results_markdown, within_cell_contrasts

    shots8 = {"values": [13.0, 9.0, 11.0], "seeds": [0, 1, 2]}
    blind8 = {"values": [1.5, 2.0], "seeds": [0, 2]}  # seed 1's blind control has not run
    rows = [{"name": "gates=open", "seeds": 3, "metrics": {"f.c8": shots8, "b.c8": blind8}},
            {"name": "gates=closed", "seeds": 3, "metrics": {"f.c8": shots8}}]  # fmt: skip
    (c,) = within_cell_contrasts(rows, ["f.c8 - b.c8"], [0, 1, 2])  # the closed row has nothing to pair
    d = c["metrics"]["f.c8 - b.c8"]
    assert c["name"] == "gates=open" and d["values"] == [11.5, 9.0] and d["seeds"] == [0, 2]
    assert (d["mean"], d["ci95"]) == mean_ci95([11.5, 9.0])
    result = {"study": "s", "axes": [], "metrics": ["f.c8", "b.c8"], "rows": [], "contrasts": [c]}
    assert "| gates=open | 2 | 10.2 ± 15.9 |" in results_markdown(result)


def test_paired_baseline_changes_only_the_first_axis():
    from mmtlab.study.runner import paired_differences

    def row(layout, loss, values):
        name = f"layout={layout}, loss={loss}"
        metrics = {"m.x": {"values": values, "seeds": [0, 1]}}
        return {"cell": {"layout": layout, "loss": loss}, "name": name, "metrics": metrics}

    rows = [row("merged", "none", [1.0, 2.0]), row("coattn", "none", [2.0, 4.0]),
            row("merged", "itc", [10.0, 20.0]), row("coattn", "itc", [13.0, 23.0])]  # fmt: skip
    found = paired_differences(rows, ["m.x"], [0, 1])
    pairs = {p["name"]: (p["baseline"], p["metrics"]["m.x"]["values"]) for p in found}
    assert pairs == {
        "layout=coattn, loss=none": ("layout=merged, loss=none", [1.0, 2.0]),
        "layout=merged, loss=itc": ("layout=merged, loss=none", [9.0, 18.0]),
        "layout=coattn, loss=itc": ("layout=merged, loss=itc", [3.0, 3.0]),
    }
    # An axis with one label (e.g. arch: {mammut: ...}) before the compared one does not hide it.
    one = [{**r, "cell": {"arch": "m", **r["cell"]}} for r in rows]
    assert len(paired_differences(one, ["m.x"], [0, 1])) == 3
    # A baseline cell that was not run (no values) leaves the cells that change one factor from it
    # without paired rows; they are not paired with anything else instead.
    rows[0]["metrics"] = {}
    assert [p["name"] for p in paired_differences(rows, ["m.x"], [0, 1])] == ["layout=coattn, loss=itc"]


def test_grid_expansion_and_exclusion(tmp_path, tiny_data):
    spec, base = load_study(write_study(tmp_path, tiny_data))
    cells = expand(spec)
    assert [c.name for c in cells] == ["layout=dual, lr=low", "layout=dual, lr=high", "layout=asym, lr=low"]
    assert cells[1].overrides == ('model.layout="modality_specific"', "train.lr=0.001")
    assert base == tmp_path / "base.yaml"


def test_study_runs_resumes_and_aggregates(tmp_path, tiny_data):
    path = write_study(tmp_path, tiny_data)
    out = run_study(path, tmp_path / "out")
    result = json.loads((out / "results.json").read_text())
    assert len(result["rows"]) == 3 and all(r["seeds"] == 2 for r in result["rows"])
    row = result["rows"][0]
    values = row["metrics"]["retrieval.t2i_r1"]["values"]
    assert row["metrics"]["retrieval.t2i_r1"]["mean"] == pytest.approx(sum(values) / 2)
    by_seed = sorted((out / "runs").glob("*/seed_*/study_run.json"), key=lambda f: f.stat().st_mtime_ns)
    assert [f.parent.name for f in by_seed] == ["seed_0"] * 3 + ["seed_1"] * 3  # seed-major: grid at seed 0 first
    first = (out / "runs" / "dual__low" / "seed_0" / "study_run.json").stat().st_mtime_ns
    run_study(path, tmp_path / "out")  # finished runs are skipped, not retrained
    assert (out / "runs" / "dual__low" / "seed_0" / "study_run.json").stat().st_mtime_ns == first
    assert "± " in (out / "results.md").read_text()
    # Each cell against the one that sets its first changed axis back: one factor at a time.
    assert [(p["name"], p["baseline"]) for p in result["paired"]] == [
        ("layout=dual, lr=high", "layout=dual, lr=low"),
        ("layout=asym, lr=low", "layout=dual, lr=low"),
    ]
    assert "Paired differences" in (out / "results.md").read_text()
    # An evaluation added to a finished study runs on the existing runs, without retraining them.
    spec = yaml.safe_load(path.read_text())
    spec["evals"]["mlm_like"] = {"split": "val", "examples": False}
    spec["metrics"].append("mlm_like.t2i_r1")
    spec["contrasts"] = ["retrieval.t2i_r1 - mlm_like.t2i_r1"]  # the test split against the validation split
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    from mmtlab import evaluate as runs

    ckpts = sorted((out / "runs" / "dual__low" / "seed_0" / "checkpoints").iterdir())
    runs.EVALS["mlm_like"] = runs.EVALS["retrieval"]  # any evaluation: the retrieval one on another split
    try:
        run_study(path, tmp_path / "out")
    finally:
        del runs.EVALS["mlm_like"]
    record = json.loads((out / "runs" / "dual__low" / "seed_0" / "study_run.json").read_text())
    assert set(record["metrics"]) == {"retrieval", "mlm_like"} and record["metrics"]["mlm_like"]["split"] == "val"
    assert sorted((out / "runs" / "dual__low" / "seed_0" / "checkpoints").iterdir()) == ckpts
    result = json.loads((out / "results.json").read_text())
    assert result["rows"][0]["metrics"]["mlm_like.t2i_r1"]["values"]
    test, val = (result["rows"][0]["metrics"][m]["values"] for m in ("retrieval.t2i_r1", "mlm_like.t2i_r1"))
    contrast = result["contrasts"][0]["metrics"]["retrieval.t2i_r1 - mlm_like.t2i_r1"]
    assert contrast["values"] == [a - b for a, b in zip(test, val)] and len(result["contrasts"]) == 3
    assert '<img src="data:image/png;base64,' in write_study_report(out).read_text()


def test_a_study_split_by_seed_aggregates_every_finished_seed(tmp_path, tiny_data):
    path = write_study(tmp_path, tiny_data, exclude=[{"layout": "asym"}, {"lr": "high"}])  # one cell
    with pytest.raises(ConfigError, match=r"seeds \[7\] are not among"):
        run_study(path, tmp_path / "out", seeds=[7])
    out = run_study(path, tmp_path / "out", seeds=[1])  # e.g. a second process
    assert [d.name for d in (out / "runs" / "dual__low").iterdir()] == ["seed_1"]
    assert json.loads((out / "results.json").read_text())["rows"][0]["seeds"] == 1
    run_study(path, tmp_path / "out", seeds=[0])
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["seeds"] == 2 and row["metrics"]["retrieval.t2i_r1"]["seeds"] == [0, 1]


def test_only_selects_cells_by_axis_label_and_names_a_bad_one(tmp_path, tiny_data):
    path = write_study(tmp_path, tiny_data)
    with pytest.raises(ConfigError, match=r"--only lr=medium: not an axis=label"):
        run_study(path, tmp_path / "out", only=["lr=medium"])
    out = run_study(path, tmp_path / "out", only=["layout=dual", "lr=high"], seeds=[0], dry_run=True)
    assert not out.exists()  # a dry run writes nothing
    run_study(path, tmp_path / "out", only=["layout=asym"], seeds=[0])
    assert sorted(d.name for d in (tmp_path / "out" / "runs").iterdir()) == ["asym__low"]


def test_bad_cell_is_reported_before_anything_runs(tmp_path, tiny_data):
    path = write_study(tmp_path, tiny_data, axes={"layout": {"oops": {"model.layout": "nope"}}}, exclude=[])
    with pytest.raises(ConfigError, match=r"study cell \[layout=oops\]: model\.layout"):
        run_study(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_study_fields(tmp_path, tiny_data):
    path = write_study(tmp_path, tiny_data, metrics=["caption.cider"])
    with pytest.raises(ConfigError, match="metrics"):
        load_study(path)
    for bad in ["retrieval.t2i_r1 - retrieval.t2i_r5", "retrieval.t2i_r1-retrieval.i2t_r1"]:  # not a metric; no " - "
        path = write_study(tmp_path, tiny_data, metrics=["retrieval.t2i_r1", "retrieval.i2t_r1"], contrasts=[bad])
        with pytest.raises(ConfigError, match="contrasts: .* must be 'A - B'"):
            load_study(path)
    # a cell's mapping would replace the section that `set` wrote into, dropping train.threads silently
    axes = {"steps": {"more": {"train": {"steps": 4}}}}
    path = write_study(tmp_path, tiny_data, axes=axes, exclude=[], set=["train.threads=1"])
    with pytest.raises(ConfigError, match=r"axes\.steps\.more: train: .* dropping set: train\.threads=1"):
        load_study(path)


def test_sigterm_during_a_run_stops_the_study_without_marking_the_run_done(tmp_path, tiny_data, monkeypatch):
    import dataclasses

    import mmtlab.train.loop as loop

    real_train = loop.train

    def sigterm_after_one_step(cfg, run_dir, resume=False, console=None, validate=None):
        result = real_train(cfg, run_dir, resume=resume, console=console, stop_after=1, progress=False)
        return dataclasses.replace(result, interrupted=True)  # what train returns after a SIGTERM

    monkeypatch.setattr(loop, "train", sigterm_after_one_step)
    path = write_study(tmp_path, tiny_data)
    with pytest.raises(StudyStopped):
        run_study(path, tmp_path / "out")
    run = tmp_path / "out" / "runs" / "dual__low" / "seed_0"
    assert (run / "checkpoints").is_dir() and not (run / "study_run.json").exists()
    assert not (run / "eval").exists()  # a half-trained run is never evaluated
    monkeypatch.setattr(loop, "train", real_train)
    run_study(path, tmp_path / "out")  # rerunning continues from the checkpoint and finishes
    assert json.loads((run / "study_run.json").read_text())["seed"] == 0


def test_study_report_clips_bounded_intervals_skips_zero_charts_and_links_runs(tmp_path):
    rows = [
        {"cell": {"x": "a"}, "name": "x=a", "seeds": 3, "runs": ["runs/x-a/seed_0"],
         "metrics": {"retrieval.t2i_r1": {"mean": 1.0, "ci95": 3.0, "values": [0.0, 0.5, 2.5],
                                          "reference": {"label": "chance", "value": 2.5}},
                     "caption.bleu4": {"mean": 1e-62, "ci95": 0.0, "values": [1e-62, 0.0, 0.0]}}},
    ]  # fmt: skip
    result = {"study": "s", "axes": ["x"], "metrics": ["retrieval.t2i_r1", "caption.bleu4"], "rows": rows}
    (tmp_path / "results.json").write_text(json.dumps(result))
    page = write_study_report(tmp_path).read_text()
    assert page.count('<img src="data:image/png;base64,') == 1  # bleu4 is all zero: no chart
    assert "every value is 0" in page and 'href="runs/x-a/seed_0/"' in page
    assert "1.0 ± 3.0" in page and 'class="scroll"' in page  # the numbers of results.md, in a scrolling box
