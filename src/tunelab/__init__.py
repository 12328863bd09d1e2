"""tunelab: fine-tune pretrained models with every standard method, and measure which one fits."""

__version__ = "0.1.0"
