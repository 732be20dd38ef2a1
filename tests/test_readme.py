"""The README's Python example runs as written (on a tiny run standing in for runs/demo)."""

import re
from pathlib import Path

import yaml
from conftest import invoke, tiny_run_config

README = Path(__file__).parent.parent / "README.md"


def python_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tiny_data, tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=2)))
    invoke("train", tmp_path / "c.yaml", "--out", tmp_path / "runs" / "demo")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "emoji-scenes-demo").symlink_to(tiny_data)
    (tmp_path / "configs").symlink_to(Path(__file__).parent.parent / "src" / "mmtlab" / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_example(), str(README), "exec"), namespace)
    probs = namespace["img"] @ namespace["txt"].T
    assert probs.shape == (1, 2)
    assert type(namespace["untrained"]) is type(namespace["model"])  # (the stand-in run is smaller than demo)


def test_preprocess_is_what_training_reads(tiny_data):
    from PIL import Image

    from mmtlab.data.pairs import ImagePreprocess, load_image, to_float

    path = next((tiny_data / "images" / "test").iterdir())
    pre = ImagePreprocess(48)
    assert (pre(Image.open(path)) == to_float(load_image(path, 48))).all()
    assert (pre(path) == pre(Image.open(path))).all() and pre(path).shape == (3, 48, 48)
