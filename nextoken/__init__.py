"""nextoken: pretrain decoder-only transformers by next-token prediction."""

__version__ = "0.1.0"
