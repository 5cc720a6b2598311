import pytest
import torch

from nextoken.config import ModelConfig
from nextoken.model import GPT, KVCache, param_counts, training_flops_per_token

VARIANTS = [
    {},
    {"pos": "rope"},
    {"norm": "post"},
    {"norm_type": "rmsnorm", "mlp": "swiglu", "pos": "rope"},
    {"tie_embeddings": False, "bias": True},
    # the options of the common families (GQA, MQA, Qwen3's q/k norm and wide heads, Pythia's parallel blocks)
    {"pos": "rope", "norm_type": "rmsnorm", "mlp": "swiglu", "n_head": 4, "n_kv_head": 2, "qkv_bias": True},
    {"pos": "rope", "n_head": 4, "n_kv_head": 1, "qk_norm": True, "head_size": 16, "mlp_hidden": 40},
    {"pos": "rope", "parallel_residual": True, "rotary_fraction": 0.25, "gelu": "tanh", "norm_eps": 1e-6},
]


def make(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 24, "vocab_size": 61, **kw})
    return GPT(cfg).eval()


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_shapes_and_causality(kw):
    model = make(**kw)
    idx = torch.randint(0, 61, (3, 24))
    logits = model(idx)
    assert logits.shape == (3, 24, 61)
    idx2 = idx.clone()
    idx2[:, 12:] = (idx2[:, 12:] + 1) % 61  # changing the future must not change the past
    assert torch.allclose(model(idx2)[:, :12], logits[:, :12], atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_matches_full_forward(kw):
    model = make(**kw)
    idx = torch.randint(0, 61, (2, 20))
    full = model(idx)
    cache = KVCache(model.cfg, 2, "cpu", torch.float32)
    pieces = [model(idx[:, :7], cache)]  # prefill, then one token at a time, then a chunk of 3
    for t in range(7, 17):
        pieces.append(model(idx[:, t:t + 1], cache))
    pieces.append(model(idx[:, 17:20], cache))
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-4)


@pytest.mark.parametrize("kw", VARIANTS)
def test_param_counts_match_the_module(kw):
    model = make(**kw)
    counts = param_counts(model.cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    emb = model.wte.weight.numel() + (model.wpe.weight.numel() if model.wpe is not None else 0)
    if not model.cfg.tie_embeddings:
        emb += model.lm_head.weight.numel()
    assert counts.non_embedding == counts.total - emb


def test_tied_embeddings_share_storage():
    model = make()
    assert model.lm_head.weight is model.wte.weight


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=8, n_head=4, d_model=256, block_size=16, vocab_size=100))
    std_proj = model.blocks[0].attn.proj.weight.std().item()
    std_qkv = model.blocks[0].attn.qkv.weight.std().item()
    assert abs(std_qkv - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)


def test_flops_per_token_is_6n_plus_attention():
    # 6 FLOPs per matmul weight (the blocks' matrices and the output layer) plus attention's 12·L·D·T (PaLM,
    # appendix B); GPT-2 small has no biases here, so its non-embedding parameters are matrices and norms.
    cfg = ModelConfig(n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=50257)
    n = param_counts(cfg).non_embedding
    assert abs(n - 85e6) / 85e6 < 0.01  # GPT-2 small: ~85M non-embedding parameters
    norms = (2 * 12 + 1) * 768
    assert training_flops_per_token(cfg) == 6 * (n - norms + 50257 * 768) + 12 * 12 * 768 * 1024


def test_next_token_distribution_shows_the_prompt_tokens_and_flags_a_trailing_space(bpe_data, bytes_data):
    from nextoken.data.tokenizer import load_tokenizer
    from nextoken.generate import next_token_distribution

    bpe, raw = load_tokenizer(bpe_data / "tokenizer.json"), load_tokenizer(bytes_data / "tokenizer.json")
    model = GPT(ModelConfig(n_layer=1, n_head=1, d_model=16, block_size=16, vocab_size=bpe.get_vocab_size()))
    dist = next_token_distribution(model, bpe, "return alpha ", top=3)
    assert "".join(dist["prompt_tokens"]) == "return alpha " and dist["trailing_space"]
    assert not next_token_distribution(model, bpe, "return alpha", top=3)["trailing_space"]
    small = GPT(ModelConfig(n_layer=1, n_head=1, d_model=16, block_size=16, vocab_size=raw.get_vocab_size()))
    assert not next_token_distribution(small, raw, "return ", top=3)["trailing_space"]  # bytes: a space is a byte


def test_kv_cache_holds_only_the_key_value_heads():
    model = make(pos="rope", n_head=4, n_kv_head=1)
    cache = KVCache(model.cfg, 2, "cpu", torch.float32)
    assert cache.k[0].shape == (2, 1, 24, 8) and cache.v[0].shape == (2, 1, 24, 8)  # a quarter of multi-head's


def test_kv_cache_grows_to_a_long_context_as_positions_come():
    model = make(pos="rope", block_size=2100)
    cache = KVCache(model.cfg, 1, "cpu", torch.float32)
    assert cache.k[0].size(2) == 1024  # not 2100 until needed
    idx = torch.randint(0, 61, (1, 1100))
    full = model(idx)
    out = torch.cat([model(idx[:, :1000], cache), model(idx[:, 1000:1099], cache), model(idx[:, 1099:], cache)], 1)
    assert cache.k[0].size(2) == 2048 and torch.allclose(out, full, atol=1e-4)


def test_new_options_at_their_defaults_keep_the_model_hash():
    """Every option added since runs existed counts in the hash only away from its default: runs written
    before it still resume (the hash of the default config as it was before they were added)."""
    from nextoken.config import Config

    assert Config().model_hash() == "e6bde8f38cc62be3"
    cfg = Config()
    cfg.model.n_kv_head = 2
    assert cfg.model_hash() != "e6bde8f38cc62be3"
