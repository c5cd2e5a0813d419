"""szoq: zeroth-order fine-tuning of quantized LLMs with transferable static sparsity masks."""

__version__ = "0.1.0"
