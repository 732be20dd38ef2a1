"""A corpus of malformed run configs and command lines: each is answered by `mmtlab train` with
exit 2 and one line that names the field or file, and nothing is written (the run directory is
not even created). Validation only: no case trains."""

import copy

import pytest
import yaml
from conftest import cli_error, tiny_run_config

# (id, changes to the tiny run config as dotted key -> value (None deletes), the error must match)
CASES = [
    # model
    ("width_zero", {"model.width": 0}, r"model\.width"),
    ("width_negative", {"model.width": -8}, r"model\.width"),
    ("width_huge", {"model.width": 10**9}, r"model\.width"),
    ("width_not_divisible", {"model.width": 33}, r"width 33 must be divisible by heads 2"),
    ("depth_negative", {"model.depth": -1}, r"model\.depth"),
    ("depth_huge", {"model.depth": 10**6}, r"model\.depth"),
    ("heads_zero", {"model.heads": 0}, r"model\.heads"),
    ("mlp_ratio_inf", {"model.mlp_ratio": float("inf")}, r"model\.mlp_ratio"),
    ("mlp_ratio_zero", {"model.mlp_ratio": 0}, r"model\.mlp_ratio"),
    ("dropout_one", {"model.dropout": 1.0}, r"model\.dropout"),
    ("dropout_negative", {"model.dropout": -0.1}, r"model\.dropout"),
    ("gelu_unknown", {"model.gelu": "relu"}, r"model\.gelu"),
    ("pool_unknown", {"model.pool": "max"}, r"model\.pool"),
    ("embed_dim_zero", {"model.embed_dim": 0}, r"model\.embed_dim"),
    ("layout_unknown", {"model.layout": "foo"}, r"model\.layout"),
    ("layout_of_another_family", {"model.layout": "mammut"}, r"layout 'mammut' needs arch: mammut"),
    ("arch_unknown", {"model.arch": "mamut"}, r"model\.arch: .*unknown family 'mamut'"),
    ("arch_number", {"model.arch": 5}, r"model\.arch"),
    ("image_size_zero", {"model.image.size": 0}, r"model\.image\.size"),
    ("image_size_huge", {"model.image.size": 10**6}, r"model\.image\.size"),
    ("image_size_not_multiple", {"model.image.size": 65}, r"image\.size 65 must be a multiple of image\.patch"),
    ("patch_zero", {"model.image.patch": 0}, r"model\.image\.patch"),
    ("channels_negative", {"model.image.channels": -3}, r"model\.image\.channels"),
    ("channels_four", {"model.image.channels": 4}, r"model\.image\.channels"),
    ("image_input_unknown", {"model.image.input": "voxels"}, r"model\.image\.input"),
    ("cpe_scale_reversed", {"model.image.cpe_scale": [0.5, 0.1]}, r"cpe_scale"),
    ("cpe_ratio_zero", {"model.image.cpe_ratio": [0, 1]}, r"cpe_ratio"),
    ("max_len_one", {"model.text.max_len": 1}, r"model\.text\.max_len"),
    ("max_len_huge", {"model.text.max_len": 10**6}, r"model\.text\.max_len"),
    ("logit_bias_nan", {"model.logit_bias": float("nan")}, r"model\.logit_bias"),
    ("outputs_lack_a_head", {"model.outputs": ["mlm"]}, r"model\.outputs lacks \['contrastive'\]"),
    ("outputs_unknown", {"model.outputs": ["bogus"]}, r"model\.outputs"),
    ("layout_args_too_deep", {"model.layout": "mixed", "model.layout_args": {"k": 9}}, r"model\.layout_args: "),
    ("layout_args_unknown", {"model.layout_args": {"nope": 1}}, r"model\.layout_args\.nope: not an argument"),
    ("layout_args_not_a_number", {"model.layout": "mixed", "model.layout_args": {"k": "two"}}, r"layout_args\.k"),
    ("caption_queries_on_encoder", {"model.caption_queries": 4}, r"caption_queries: only used with model\.arch coca"),
    ("data2vec_section_on_encoder", {"model.data2vec": {}}, r"data2vec: only used with model\.arch data2vec"),
    ("flamingo_section_on_encoder", {"model.flamingo": {"vision_run": "v", "lm_run": "l"}}, r"flamingo: only used"),
    ("speech_section_on_encoder", {"model.speech": {}}, r"speech: only used with model\.arch data2vec"),
    ("model_base_number", {"model.base": 5}, r"model\.base"),
    ("model_base_unknown", {"model.base": "no-such-model"}, r"unknown model config 'no-such-model'"),
    ("model_text_not_a_section", {"model.text": 5}, r"model\.text"),
    ("model_unknown_field", {"model.widht": 64}, r"model\.widht: unknown field"),
    # train
    ("steps_zero", {"train.steps": 0}, r"train\.steps"),
    ("steps_negative", {"train.steps": -5}, r"train\.steps"),
    ("steps_text", {"train.steps": "many"}, r"train\.steps"),
    ("batch_zero", {"train.batch_size": 0}, r"train\.batch_size"),
    ("batch_huge", {"train.batch_size": 10**9}, r"train\.batch_size"),
    ("grad_accum_huge", {"train.grad_accum": 10**9}, r"train\.grad_accum"),
    ("lr_zero", {"train.lr": 0}, r"train\.lr"),
    ("lr_inf", {"train.lr": float("inf")}, r"train\.lr"),
    ("lr_negative", {"train.lr": -1e-3}, r"train\.lr"),
    ("lr_text", {"train.lr": "fast"}, r"train\.lr"),
    ("betas_above_one", {"train.betas": [1.5, 0.9]}, r"train\.betas"),
    ("betas_one_value", {"train.betas": [0.9]}, r"train\.betas"),
    ("eps_zero", {"train.eps": 0}, r"train\.eps"),
    ("weight_decay_negative", {"train.weight_decay": -1}, r"train\.weight_decay"),
    ("warmup_negative", {"train.warmup_steps": -1}, r"train\.warmup_steps"),
    ("min_lr_ratio_two", {"train.min_lr_ratio": 2}, r"train\.min_lr_ratio"),
    ("grad_clip_zero", {"train.grad_clip": 0}, r"train\.grad_clip"),
    ("precision_unknown", {"train.precision": "fp8"}, r"train\.precision"),
    ("data_parallel_unknown", {"train.data_parallel": "zero3"}, r"train\.data_parallel"),
    ("checkpoint_every_zero", {"train.checkpoint_every": 0}, r"train\.checkpoint_every"),
    ("keep_checkpoints_zero", {"train.keep_checkpoints": 0}, r"train\.keep_checkpoints"),
    ("threads_zero", {"train.threads": 0}, r"train\.threads"),
    ("init_from_missing", {"train.init_from": "/nonexistent/run"}, r"train\.init_from: /nonexistent/run"),
    ("on_nonfinite_unknown", {"train.on_nonfinite": "ignore"}, r"train\.on_nonfinite"),
    ("train_unknown_field", {"train.lrr": 1}, r"train\.lrr: unknown field; allowed: steps"),
    ("train_null", {"train": None, "train.": "null"}, r"train: empty section"),
    # objectives
    ("objectives_empty", {"objectives": {}}, r"objectives: at least one objective"),
    ("objective_unknown", {"objectives": {"clip": 1}}, r"objectives\.clip"),
    ("objective_weight_bool", {"objectives": {"contrastive": True}}, r"objectives\.contrastive: give a weight"),
    ("objective_weights_all_zero", {"objectives": {"contrastive": 0}}, r"objectives: every weight is 0"),
    ("objective_weight_negative", {"objectives": {"contrastive": -1}}, r"objectives\.contrastive\.weight"),
    ("objective_weight_nan", {"objectives": {"contrastive": {"weight": float("nan")}}}, r"objectives\.contrastive"),
    ("caption_on_encoder", {"objectives": {"caption": 1}}, r"objectives\.caption needs model\.arch mammut"),
    ("data2vec_on_encoder", {"objectives": {"data2vec": 1}}, r"objectives\.data2vec needs model\.arch data2vec"),
    ("mrm_on_patches", {"objectives": {"mrm_kl": 1}}, r"objectives\.mrm_kl: masked region modelling needs"),
    ("mask_prob_above_one", {"objectives": {"mlm": {"mask_prob": 1.5}}}, r"objectives\.mlm\.mask_prob"),
    ("option_of_another_loss", {"objectives": {"contrastive": {"gamma": 2}}}, r"objectives\.contrastive\.gamma"),
    ("hard_negatives_alone", {"objectives": {"itm": {"negatives": "hard"}}}, r"objectives\.itm\.negatives"),
    ("one_candidate", {"objectives": {"itm_contrastive": {"candidates": 1}}}, r"candidates"),
    # data
    ("root_missing", {"data.root": "/nonexistent/data"}, r"/nonexistent/data"),
    ("format_unknown", {"data.format": "tfrecord"}, r"data\.format"),
    ("vqa_on_encoder", {"data.task": "vqa"}, r"data\.task vqa"),
    ("text_only_with_contrastive", {"data.text_only": True}, r"data\.text_only"),
    ("max_train_pairs_zero", {"data.max_train_pairs": 0}, r"data\.max_train_pairs"),
    ("num_workers_negative", {"data.num_workers": -1}, r"data\.num_workers"),
    ("mixture_on_encoder", {"data.mixture": {"interleaved": 1.0}}, r"data\.mixture: model\.arch encoder"),
    ("num_regions_zero", {"data.regions.num_regions": 0}, r"data\.regions\.num_regions"),
    ("detector_missing", {"data.regions.detector": "/nonexistent.safetensors"}, r"data\.regions\.detector"),
    ("detector_a_directory", {"data.regions.detector": "{tmp}"}, r"data\.regions\.detector: .* is a directory"),
    ("shards_huge_range", {"data.format": "webdataset", "data.shards": "/s/{0..999999999}.tar"}, r"data\.shards"),
    ("pairs_limit_on_stream", {"data.format": "webdataset", "data.max_train_pairs": 5}, r"data\.max_train_pairs"),
    ("images_missing", {"data.images": "/nonexistent/images"}, r"data\.images"),
    ("interleaved_missing", {"data.interleaved": "/nonexistent/docs"}, r"data\.interleaved"),
    # tokenizer, eval, top level
    ("vocab_tiny", {"tokenizer.vocab_size": 10}, r"tokenizer\.vocab_size"),
    ("tokenizer_missing", {"tokenizer.path": "/nonexistent/tokenizer.json"}, r"tokenizer\.path: .* is missing"),
    ("tokenizer_a_directory", {"tokenizer.path": "{tmp}"}, r"tokenizer\.path: .* is a directory"),
    ("seed_negative", {"seed": -1}, r"seed"),
    ("seed_huge", {"seed": 10**30}, r"seed"),
    ("seed_text", {"seed": "abc"}, r"seed"),
    ("eval_batch_zero", {"eval.batch_size": 0}, r"eval\.batch_size"),
    ("top_level_unknown", {"foo": 1}, r"foo: unknown field"),
    (
        "data2vec_modalities_number",
        {"model.arch": "data2vec", "model.data2vec": {"modalities": 5}, "objectives": {"data2vec": 1}},
        r"model\.data2vec\.modalities",
    ),
    (
        "data2vec_top_k_too_deep",
        {"model.arch": "data2vec", "model.data2vec": {"image": {"top_k": 9}}, "objectives": {"data2vec": 1}},
        r"top_k 9 exceeds depth 2",
    ),
    (
        "mammut_negative_vision_depth",
        {"model.arch": "mammut", "model.layout": None, "model.layout_args": {"vision_depth": -1}},
        r"model\.layout_args\.vision_depth",
    ),
    ("flamingo_without_section", {"model.arch": "flamingo", "model.layout": None}, r"flamingo"),
    (
        "video_tube_larger_than_clip",
        {"model.arch": "mammut", "model.layout": None, "model.video": {"frames": 4}},
        r"video\.tubes\[1\]: kernel \(8, 4, 4\) from offset \(0, 4, 4\) does not fit a clip of .* 4x64x64",
    ),
    (
        "video_frame_start_past_clip",
        {"model.arch": "mammut", "model.layout": None, "model.video": {"frames": 8, "frame_start": 8}},
        r"video\.frame_start 8 must be below video\.frames 8",
    ),
]


def apply(raw: dict, changes: dict, tmp) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in changes.items():
        if key.endswith("."):
            continue
        node, parts = raw, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, str):
            value = value.replace("{tmp}", str(tmp))
        if value is None and key != "train":
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return raw


def assert_one_line_error(code: int, err: str, match: str) -> None:
    import re

    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert re.search(match, err), err


@pytest.mark.parametrize("changes, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_is_one_line_and_writes_nothing(changes, match, tiny_data, tmp_path, monkeypatch, capsys):
    raw = apply(tiny_run_config(tiny_data), changes, tmp_path)
    if "model.arch" in changes and changes.get("model.layout", "") is None:
        raw["model"].pop("layout", None)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert_one_line_error(*cli_error(monkeypatch, capsys, "train", path, "--out", out), match)
    assert not out.exists(), "nothing may be written for a bad config"


def _file_cases(tmp):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    return {
        "directory": (tmp, r"is a directory"),
        "png": (png, r"not a text"),
        "latin1": ("model: caf\xe9\n".encode("latin-1"), r"not a text \(UTF-8\) file"),
        "empty": (b"", r"the file is empty"),
        "list": (b"- a\n- b\n", r"expected a mapping at the top level"),
        "bad_yaml": (b"model: [unclosed\n", r"not valid YAML"),
        "duplicate_keys": (b"seed: 1\nseed: 2\n", r"key 'seed' is given twice"),
        "missing": (None, r"config file not found"),
    }


@pytest.mark.parametrize("case", list(_file_cases(None)))
def test_malformed_config_file_is_one_line(case, tmp_path, monkeypatch, capsys):
    content, match = _file_cases(tmp_path / "adir")[case]
    path = tmp_path / "adir" if case == "directory" else tmp_path / "c.yaml"
    if case == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    assert_one_line_error(*cli_error(monkeypatch, capsys, "train", path, "--out", out), match)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--set", "train.lr"], r"--set 'train\.lr': expected key=value"),
        (["--set", "train.lr=[1,"], r"--set train\.lr: not valid YAML"),
        (["--set", "model.width=abc"], r"model\.width"),
        (["--set", "train.steps.x=1"], r"--set train\.steps\.x: 'steps' is not a section"),
        (["--set", ".lr=1"], r"empty field name"),
    ],
    ids=["no_equals", "bad_yaml", "bad_value", "into_a_value", "empty_name"],
)
def test_malformed_overrides_are_one_line(args, match, tiny_data, tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    out = tmp_path / "out"
    assert_one_line_error(*cli_error(monkeypatch, capsys, "train", path, "--out", out, *args), match)
    assert not out.exists()


def test_dry_run_validates_and_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    from conftest import invoke

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    out = invoke("train", path, "--out", tmp_path / "out", "--dry-run")
    assert "config OK" in out and not (tmp_path / "out").exists()


def test_corpus_is_large_enough():
    assert len(CASES) + len(_file_cases(None)) + 5 >= 80
