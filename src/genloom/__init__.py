"""genloom: a PyTorch toolkit for text generation (see docs/architecture.md)."""

__version__ = "0.1.0"
