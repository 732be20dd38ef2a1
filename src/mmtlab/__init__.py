"""mmtlab: multimodal transformers as configurations."""

__version__ = "0.1.0"
