import pytest
import yaml

from mmtlab.config import ConfigError, load_config


def test_defaults_and_model_by_name():
    cfg = load_config({"model": "dual-tiny"})
    assert cfg.model.layout == "modality_specific"
    assert cfg.model.outputs == ["contrastive"]


def test_model_base_with_overrides_and_dotted_set():
    cfg = load_config(
        {"model": {"base": "dual-tiny", "depth": 6}, "objectives": {"contrastive": 1}},
        ["train.lr=3e-4", "model.heads=8", "objectives.mlm=0.5"],
    )
    assert cfg.model.depth == 6 and cfg.model.heads == 8 and cfg.train.lr == 3e-4
    assert cfg.objectives["mlm"].weight == 0.5
    assert cfg.model.outputs == ["contrastive", "mlm"]


def test_an_override_to_null_drops_an_objective():
    base = {"model": {"base": "dual-tiny"}, "objectives": {"contrastive": 1, "mlm": 0.5}}
    cfg = load_config(base, ["objectives.mlm=null"])
    assert list(cfg.objectives) == ["contrastive"] and cfg.model.outputs == ["contrastive"]
    with pytest.raises(ConfigError, match="at least one objective"):
        load_config(base, ["objectives.mlm=null", "objectives.contrastive=null"])


def test_shipped_run_configs_validate():
    from mmtlab.config import CONFIG_DIR

    runs = sorted((CONFIG_DIR / "runs").glob("*.yaml"))
    assert runs
    for path in runs:
        load_config(path)


def test_shipped_model_configs_and_studies_validate():
    from mmtlab.config import CONFIG_DIR
    from mmtlab.study.spec import cell_config, expand, load_study

    models = sorted((CONFIG_DIR / "models").glob("*.yaml"))
    assert models
    for path in models:
        own_objective = yaml.safe_load(path.read_text()).get("arch") == "data2vec"  # trains with data2vec only
        raw = {"model": path.stem, **({"objectives": {"data2vec": 1.0}} if own_objective else {})}
        assert load_config(raw).model.layout
    studies = sorted((CONFIG_DIR / "studies").glob("*.yaml"))
    assert studies
    for path in studies:
        spec, base = load_study(path)
        for cell in expand(spec):
            cell_config(spec, base, cell, spec.seeds[0])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.lrr=1"], r"train\.lrr: unknown field; allowed: steps, batch_size"),
        (["model.layout=foo"], r"model\.layout: Input should be 'merged', 'modality_specific'.*\(got 'foo'\)"),
        (["train.batch_size=-1"], r"train\.batch_size: Input should be greater than 0"),
        (["objectives.clip=1"], r"objectives\.clip"),
        (["model.width=130"], r"width 130 must be divisible by heads 4"),
        (["train"], r"expected key=value"),
    ],
)
def test_bad_config_names_the_field(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config({"model": "dual-tiny"}, overrides)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model config 'nope'; known: .*dual-tiny"):
        load_config({"model": "nope"})


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_bad_config_is_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: dual-tiny\ntrain: {lrr: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "mmtlab.cli", "train", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lrr: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
