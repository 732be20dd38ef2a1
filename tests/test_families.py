"""The family registry (mmtlab/families.py): every entry is complete and consistent, and a new
family is one class plus one entry."""

import json

import pytest
import yaml
from conftest import invoke, tiny_run_config

from mmtlab.config import ConfigError, load_config
from mmtlab.families import _DECODER, FAMILIES, Family
from mmtlab.models.mammut import MaMMUT


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_entry_resolves(name):
    from mmtlab.evaluate import EVALS
    from mmtlab.models.fusion import PRESETS

    fam = FAMILIES[name]
    assert isinstance(fam.model_class, type)
    for hook in ("complete", "load_pretrained"):
        assert getattr(fam, hook) is None or callable(fam.hook(hook))
    assert set(fam.evals) <= set(EVALS), set(fam.evals) - set(EVALS)
    assert fam.layout is None or fam.layout in PRESETS
    assert fam.objectives, "a family trains with at least one objective"


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"model\.arch: .*unknown family 'mamut'; known: encoder, mammut"):
        load_config({"model": {"arch": "mamut"}})


def test_fields_of_other_families_are_errors():
    with pytest.raises(ConfigError, match="caption_queries: only used with model.arch coca"):
        load_config({"model": {"arch": "mammut", "caption_queries": 4}, "objectives": {"caption": 1.0}})
    with pytest.raises(ConfigError, match="data2vec: only used with model.arch data2vec"):
        load_config({"model": {"data2vec": {}}})


class PrefixMaMMUT(MaMMUT):
    """A 'new' family for the test: MaMMUT under another name and class."""


@pytest.mark.slow
def test_a_new_family_is_one_entry(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "prefix_mammut", Family(f"{__name__}:PrefixMaMMUT", layout="mammut", **_DECODER))
    raw = tiny_run_config(tiny_data, steps=2)
    raw["model"] = {**raw["model"], "arch": "prefix_mammut", "pool": "mean", "layout_args": {"vision_depth": 1}}
    raw["model"].pop("layout")
    raw["objectives"] = {"contrastive": 1.0, "caption": 1.0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    invoke("train", tmp_path / "c.yaml", "--out", run)
    import mmtlab

    assert type(mmtlab.load(run)).__name__ == "PrefixMaMMUT"
    invoke("eval", "retrieval", run, "--max-images", 8)
    invoke("eval", "caption", run, "--max-images", 4, "--method", "greedy")
    assert json.loads((run / "eval" / "caption.json").read_text())["n_images"] == 4
    with pytest.raises(Exception, match="eval probe needs a model.arch encoder or data2vec run, not 'prefix_mammut'"):
        from mmtlab.eval.runs import eval_probe

        eval_probe(run)
