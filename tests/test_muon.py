"""`--optim.name muon` (issue 14): Muon (torch.optim.Muon) for the blocks' weight matrices, AdamW for the rest,
one schedule for both; its state in checkpoints, exact resume and rollback."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from conftest import tiny_config

from nextoken.config import ModelConfig, OptimConfig, build_config
from nextoken.errors import ConfigError
from nextoken.model import GPT
from nextoken.training.loop import train
from nextoken.training.optim import build_optimizer, muon_params, param_groups, set_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=50, **kw))


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "bias": True, "tie_embeddings": False, "pos": "rope"}])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(kw):
    model = _model(**kw)
    muon = {n for n, _ in muon_params(model)}
    expect = {f"blocks.{i}.{m}.weight" for i in range(2)
              for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", *(("mlp.gate",) if kw else ()))}
    assert muon == expect
    opt = build_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))
    muon_opt, adamw = opt.optimizers
    assert isinstance(muon_opt, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    owned = [p for g in opt.param_groups for p in g["params"]]
    assert len(owned) == len({id(p) for p in owned}) == len(list(model.parameters()))  # each exactly once


def test_one_step_equals_torch_muon_and_adamw_on_their_groups():
    cfg = OptimConfig(name="muon", lr=1e-3, muon_lr=0.05, weight_decay=0.1)
    a, b = _model(), _model()
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    ours = build_optimizer(a, cfg, torch.device("cpu"))
    set_lr(ours, 2e-4)  # a step of the schedule: AdamW at 2e-4, Muon at 2e-4 * 0.05 / 1e-3 = 1e-2
    ours.step()
    hidden = {id(p) for _, p in muon_params(b)}
    ref_muon = torch.optim.Muon([p for _, p in muon_params(b)], lr=1e-2, weight_decay=0.1, momentum=0.95,
                                nesterov=True)
    rest = torch.nn.ParameterList(p for p in b.parameters() if id(p) not in hidden)
    ref_adamw = torch.optim.AdamW(param_groups(rest, 0.1), lr=2e-4, betas=(0.9, 0.95), eps=1e-8)
    ref_muon.step()
    ref_adamw.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name


def _weights(run):
    from safetensors.torch import load_file

    name = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def test_muon_resume_is_bit_identical_and_its_momentum_is_checkpointed(bytes_data, tmp_path):
    cfg = dict(optim__name="muon", train__ckpt_every=7, train__keep=5)
    train(tiny_config(bytes_data, **cfg), tmp_path / "full", quiet=True)
    split = tmp_path / "split"
    train(tiny_config(bytes_data, **cfg), split, quiet=True)
    for name in ("step_00000014", "step_00000020"):
        shutil.rmtree(split / "checkpoints" / name)
    (split / "checkpoints" / "latest").write_text("step_00000007\n")
    train(tiny_config(bytes_data, **cfg), split, resume=True, quiet=True)
    a, b = _weights(tmp_path / "full"), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    state = load_file(str(split / "checkpoints" / "step_00000007" / "state.safetensors"))
    assert "optim.blocks.0.attn.qkv.weight.momentum_buffer" in state and "optim.wte.weight.exp_avg" in state


def test_muon_rolls_back_through_its_snapshots(bytes_data, tmp_path):
    cfg = tiny_config(bytes_data, optim__name="muon", stability__inject="nan@12", stability__rollback_steps=4,
                      stability__snapshot_every=4, stability__skip_batches=2)
    res = train(cfg, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["detail"]["to_step"] for r in rows if r.get("type") == "rollback"] == [8]
    assert res["step"] == 20 and res["loss"] == res["loss"]


def test_muon_with_fsdp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="FSDP2 shards; use --train.parallel ddp"):
        build_config(overrides=[("optim.name", "muon"), ("train.parallel", "fsdp")])


def test_the_optimizer_state_dict_round_trips():
    model = _model()
    opt = build_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))
    model(torch.zeros(1, 16, dtype=torch.long)).sum().backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    again = build_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))
    again.load_state_dict(saved)
    for p in model.parameters():
        for k, v in opt.state.get(p, {}).items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(again.state.get(p)[k]))
