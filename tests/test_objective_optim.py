import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from nextoken.config import ModelConfig, OptimConfig
from nextoken.model import GPT
from nextoken.training.objective import IGNORE_INDEX, next_token_loss
from nextoken.training.optim import build_optimizer, effective_warmup, lr_at, param_groups


def test_cross_entropy_matches_torch_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[1, 3:] = IGNORE_INDEX
    loss, ce = next_token_loss(logits, targets)
    ref = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, ref) and torch.allclose(ce, ref)
    keep = targets.view(-1) != IGNORE_INDEX
    manual = -logits.view(-1, 11).log_softmax(-1)[keep, targets.view(-1)[keep]].mean()
    assert torch.allclose(loss, manual, atol=1e-6)


def test_z_loss_adds_coef_times_mean_log_z_squared():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 7) * 3
    targets = torch.randint(0, 7, (3, 4))
    loss, ce = next_token_loss(logits, targets, z_loss=1e-4)
    log_z = torch.logsumexp(logits.view(-1, 7), -1)
    assert torch.allclose(loss, ce + 1e-4 * (log_z ** 2).mean(), atol=1e-7)


def test_label_smoothing_matches_torch_and_formula():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    loss, ce = next_token_loss(logits, targets, label_smoothing=0.1)
    ref = F.cross_entropy(logits.view(-1, 5), targets.view(-1), label_smoothing=0.1)
    logp = logits.view(-1, 5).log_softmax(-1)
    formula = (0.9 * -logp.gather(1, targets.view(-1, 1)).squeeze(1) + 0.1 * -logp.mean(-1)).mean()
    assert torch.allclose(loss, ref) and torch.allclose(loss, formula, atol=1e-6)
    assert not torch.allclose(loss, ce)  # the logged figure stays the plain cross-entropy


def test_weight_decay_only_on_matrices():
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=20, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) > 0


def test_adamw_matches_torch_reference_step():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=20))
    ref = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=20))
    ref.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    ref_opt = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 20, (2, 8))
    for m, o in ((model, opt), (ref, ref_opt)):
        m(x).sum().backward()
        o.step()
    assert opt.defaults["fused"]  # one kernel over all parameters, on CPUs too
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):  # the reference is the foreach code
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_warmup_then_cosine_matches_formula_and_torch():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    N = 110
    assert lr_at(0, cfg, N) == pytest.approx(0.1)
    assert lr_at(9, cfg, N) == pytest.approx(1.0)
    assert lr_at(N - 1, cfg, N) == pytest.approx(0.1)
    # after warmup, torch's CosineAnnealingLR with T_max = N-1-warmup and eta_min = floor
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=N - 1 - 10, eta_min=0.1)
    for step in range(10, N):
        assert lr_at(step, cfg, N) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_linear_wsd_constant_schedules():
    N = 100
    lin = OptimConfig(lr=2.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert [lr_at(s, lin, N) for s in (0, 33, 99)] == pytest.approx([2.0, 2.0 * (1 - 33 / 99), 0.0])
    wsd = OptimConfig(lr=1.0, warmup_steps=5, min_lr_ratio=0.0, schedule="wsd", decay_ratio=0.2)
    assert lr_at(50, wsd, N) == 1.0 and lr_at(79, wsd, N) == 1.0
    assert lr_at(80, wsd, N) == 1.0 and lr_at(99, wsd, N) == pytest.approx(0.0)
    assert lr_at(90, wsd, N) == pytest.approx(1 - 10 / 19)
    const = OptimConfig(lr=0.5, warmup_steps=4, schedule="constant")
    assert lr_at(1, const, N) == pytest.approx(0.25) and lr_at(80, const, N) == 0.5


def test_gradient_accumulation_equals_one_larger_batch():
    from nextoken.training.loop import _forward_backward  # the loop's own step

    torch.manual_seed(0)
    cfg_m = ModelConfig(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=20)
    a, b = GPT(cfg_m), GPT(cfg_m)
    b.load_state_dict(a.state_dict())
    data = torch.randint(0, 20, (8, 9))

    class Sampler:
        def batch(self, step, n, offset=0, count=None):
            rows = data[offset:offset + (count or n - offset)]
            return rows[:, :-1], rows[:, 1:]

    from nextoken.config import Config
    from nextoken.data.prefetch import DeviceBatches
    from nextoken.device import make_runtime
    from nextoken.training.distributed import Dist, rank_slices
    from nextoken.training.faults import Faults
    from nextoken.training.objective import loss_fn

    results = []
    for model, (bs, accum) in ((a, (8, 1)), (b, (2, 4))):
        cfg = Config()
        cfg.model = cfg_m
        cfg.train.batch_size, cfg.train.grad_accum = bs, accum
        rt, one = make_runtime(cfg.train), Dist()  # one process: its slice is the whole batch
        batches = DeviceBatches(Sampler(), bs * accum, rank_slices(bs, accum, one), rt.device)
        step = loss_fn(model, rt.autocast)
        loss, norm = _forward_backward(model, step, batches, 0, cfg, rt, Faults(), one)
        results.append((loss, norm))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert math.isfinite(results[0][1])


# ---- schedule edges: any lengths, the last step at the floor (issue 15, fault 5) ------------------------

SCHEDULES = ("cosine", "linear", "wsd", "constant")
W = 10


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 1, W])
@pytest.mark.parametrize("max_steps", [1, 2, W, W + 1, W + 2, 100])
def test_schedule_edges_rise_to_peak_then_end_at_floor(schedule, warmup, max_steps):
    cfg = OptimConfig(lr=2.0, warmup_steps=warmup, min_lr_ratio=0.1, schedule=schedule)
    peak, floor = 2.0, 0.2
    lrs = [lr_at(s, cfg, max_steps) for s in range(max_steps)]
    w = effective_warmup(cfg, max_steps)
    assert w == (warmup if warmup < max_steps else max_steps // 10)  # a warmup that does not fit: a tenth of the run
    assert all(0 < lr <= peak * (1 + 1e-12) for lr in lrs)
    assert lrs[-1] == pytest.approx(peak if schedule == "constant" else floor, rel=1e-12)
    rise, rest = lrs[:w], lrs[w:]
    assert rise == pytest.approx([peak * (s + 1) / w for s in range(w)])  # linear, reaching the peak at step w-1
    assert all(a < b for a, b in pairwise(rise))
    assert all(a >= b for a, b in pairwise(rest))  # non-increasing after warmup
    if max_steps >= 2:  # every run but a single step reaches the peak (one step is the last, at the floor)
        assert max(lrs) == pytest.approx(peak)


def test_tiny_preset_warmup_with_twenty_steps_is_a_tenth():
    cfg = OptimConfig(lr=1.0, warmup_steps=50, min_lr_ratio=0.1, schedule="cosine")  # the tiny preset's warmup
    lrs = [lr_at(s, cfg, 20) for s in range(20)]
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and lrs[-1] == pytest.approx(0.1)


def test_wsd_with_a_decay_shorter_than_one_step_still_ends_at_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=5, min_lr_ratio=0.0, schedule="wsd", decay_ratio=0.005)
    assert lr_at(98, cfg, 100) == 1.0 and lr_at(99, cfg, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("warmup,max_steps", [(10, 12), (10, 100), (3, 40), (50, 20)])
def test_warmup_cosine_and_linear_match_torch_sequential_lr(warmup, max_steps):
    """Parity with PyTorch's LinearLR warmup (factor (s+1)/w) then CosineAnnealingLR or LinearLR to the floor,
    over the whole run, for lengths where PyTorch's decay has at least one step (T_max >= 1)."""
    floor_ratio = 0.1
    for schedule in ("cosine", "linear"):
        cfg = OptimConfig(lr=1.0, warmup_steps=warmup, min_lr_ratio=floor_ratio, schedule=schedule)
        w = effective_warmup(cfg, max_steps)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        span = max_steps - 1 - w
        decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=span, eta_min=floor_ratio)
                 if schedule == "cosine" else
                 torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=floor_ratio, total_iters=span))
        if w > 1:
            rise = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [rise, decay], milestones=[w])
        else:
            sched = decay
        for step in range(max_steps):
            assert lr_at(step, cfg, max_steps) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), (schedule, step)
            opt.step()
            sched.step()
