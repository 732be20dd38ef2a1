"""mmtlab: multimodal transformers as configurations.

cfg = mmtlab.load_config("configs/runs/demo.yaml", overrides=["train.steps=100"])
model = mmtlab.build_model(cfg)          # needs cfg.model.text.vocab_size (set by training)
model = mmtlab.load("runs/demo")         # a trained run, with model.tokenizer and model.preprocess
model, preprocess, tokenizer = mmtlab.load_model_and_transforms("runs/demo")
"""

__version__ = "0.1.0"

from mmtlab.api import build_model, load, load_config, load_detector, load_model_and_transforms  # noqa: E402

__all__ = ["build_model", "load", "load_config", "load_detector", "load_model_and_transforms", "__version__"]
