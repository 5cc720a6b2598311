from nextoken.model.counting import param_counts, training_flops_per_token
from nextoken.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "param_counts", "training_flops_per_token"]
