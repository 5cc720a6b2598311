"""warmup: pre-LN and post-LN blocks, each with and without learning-rate warmup, over a sweep of learning rates
(Wortsman et al. 2023's LR sensitivity): final loss against LR, and per-layer gradient norms at initialization."""

from __future__ import annotations

import math

import torch

from nextoken.data.loader import BatchSampler, TokenData
from nextoken.eval.measures import layer_grad_norms
from nextoken.lab.base import (
    INCONCLUSIVE,
    Context,
    Experiment,
    Verdict,
    base_config,
    draw_sweep,
    held_if_all,
    lr_sweep,
    paired,
    pm,
    rule_text,
    seeds,
    sign,
    sweep_figures,
    sweep_table,
    text_data,
)
from nextoken.model import GPT

ARMS = ("post-warmup", "post-nowarmup", "pre-warmup", "pre-nowarmup")


class Warmup(Experiment):
    name = "warmup"
    claim = ("learning-rate warmup matters mostly for post-LN transformers: their gradients near the output are "
             "large at initialization, and without warmup only small learning rates train; pre-LN trains "
             "without it")
    source = ("Xiong et al. 2020 (On Layer Normalization in the Transformer Architecture) §3; Liu et al. 2020 "
              "(Understanding the Difficulty of Training Transformers); Wortsman et al. 2023 for the LR sweep")
    cost = {"smoke": "about 20 s",
            "small": "3.8 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(36 runs of 200 steps)",
            "full": "60 GPU runs"}

    def lrs(self, ctx: Context) -> list[float]:
        return ctx.pick([3e-3, 3e-2], [1e-3, 3e-3, 1e-2], [3e-4, 1e-3, 3e-3, 1e-2, 3e-2])

    def variants(self, ctx: Context):
        steps = ctx.pick(30, 200, 3000)
        base = base_config(ctx, text_data(ctx), **{"train.max_steps": steps, "model.n_layer": ctx.pick(2, 4, 12),
                                                    "train.eval_tokens": ctx.pick(2048, 16384, 1 << 18)})
        warm = steps // 5  # a long warmup, a fifth of the run (Xiong et al. warm up over 4000 steps)
        arms = {f"{norm}-{w}": {"model.norm": norm, "optim.warmup_steps": warm if w == "warmup" else 0}
                for norm in ("post", "pre") for w in ("warmup", "nowarmup")}
        return lr_sweep(base, arms, self.lrs(ctx), seeds(ctx))

    def measure(self, ctx: Context, runs) -> dict:
        cfg = next(iter(runs.values())).config
        f = sweep_figures(runs, list(ARMS), self.lrs(ctx), seeds(ctx), math.log(cfg.model.vocab_size))
        f["grad_norms_init"] = {}
        for norm in ("pre", "post"):
            c = runs[f"{norm}-warmup-lr{f['lrs'][0]:g}-s{f['seeds'][0]}"].config
            torch.manual_seed(c.train.seed)  # the run's own initialization (training/loop.py builds it so)
            model = GPT(c.model)
            x, y = BatchSampler(TokenData(c.data.path, "train"), c.model.block_size, c.train.seed).batch(
                0, c.train.batch_size)
            f["grad_norms_init"][norm] = layer_grad_norms(model, x, y)
        f["warmup_steps"] = next(r.config.optim.warmup_steps for n, r in runs.items() if n.startswith("post-warmup"))
        f["n_layer"], f["steps"] = cfg.model.n_layer, cfg.train.max_steps
        return f

    def setup(self, f: dict) -> str:
        g = f["grad_norms_init"]
        blocks = {n: [v for k, v in g[n].items() if k.startswith("block")] for n in g}
        return (f"{f['n_layer']} blocks with model.norm post and pre, {f['steps']} steps, with "
                f"{f['warmup_steps']} steps of linear warmup or none, at peak learning rates "
                f"{', '.join(f'{x:g}' for x in f['lrs'])}. LR sensitivity (Wortsman et al. 2023): the mean over "
                "the swept LRs of min(final loss, loss at init) minus the best of them; an LR 'trains' when its "
                f"final loss is within {f['within']:g} nats of the best any arm reached at that seed. Gradient norm "
                f"at init, first / last block: post-LN {blocks['post'][0]:.3g} / {blocks['post'][-1]:.3g}, pre-LN "
                f"{blocks['pre'][0]:.3g} / {blocks['pre'][-1]:.3g}.")

    def table(self, f: dict):
        return sweep_table(f, list(ARMS))

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        draw_sweep(f, ax1, list(ARMS))
        for norm in ("pre", "post"):
            g = f["grad_norms_init"][norm]
            keys = [k for k in g if k.startswith("block")]
            ax2.plot(range(len(keys)), [g[k] for k in keys], "o-", label=f"{norm}-LN")
        ax2.set_xlabel("block (0: nearest the input)")
        ax2.set_ylabel("gradient norm at init")
        ax2.set_yscale("log")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        s = {a: f["sensitivity"][a]["values"] for a in ARMS}
        post = paired(s["post-warmup"], s["post-nowarmup"])  # > 0: warmup lowered post-LN's sensitivity
        pre = paired(s["pre-warmup"], s["pre-nowarmup"])
        more = paired([b - a for a, b in zip(s["pre-warmup"], s["pre-nowarmup"], strict=True)],
                      [b - a for a, b in zip(s["post-warmup"], s["post-nowarmup"], strict=True)])
        why = (f"what warmup took off the LR sensitivity: post-LN {pm(post)}, pre-LN {pm(pre)}; post-LN's gain minus "
               f"pre-LN's {pm(more)}; LRs that train (of {len(f['lrs'])}): post-LN {f['trained']['post-warmup']:.1f} "
               f"with warmup, {f['trained']['post-nowarmup']:.1f} without; pre-LN {f['trained']['pre-warmup']:.1f} "
               f"/ {f['trained']['pre-nowarmup']:.1f} (rule: held if warmup lowers post-LN's sensitivity and lowers "
               f"it more than pre-LN's, each {rule_text()})")
        outcome = held_if_all(sign(post), sign(more))
        return Verdict(outcome, why + ("; within the noise" if outcome == INCONCLUSIVE else ""))


EXPERIMENT = Warmup()
