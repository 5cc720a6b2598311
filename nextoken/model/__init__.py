from nextoken.model.counting import flops_per_token, param_counts
from nextoken.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "flops_per_token", "param_counts"]
