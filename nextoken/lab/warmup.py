"""warmup: pre-LN and post-LN blocks, each with and without learning-rate warmup, at a learning rate where
it matters: loss curves, per-layer gradient norms at initialization, which runs diverge."""

from __future__ import annotations

import torch

from nextoken.data.loader import BatchSampler, TokenData
from nextoken.eval.measures import layer_grad_norms
from nextoken.lab.base import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Context,
    Experiment,
    Verdict,
    base_config,
    curve,
    final_eval,
    text_data,
    with_changes,
)
from nextoken.model import GPT
from nextoken.nonfinite import divergence

MATTERS = 0.05  # nats: a warmup gain below this is no gain


class Warmup(Experiment):
    name = "warmup"
    claim = ("learning-rate warmup matters mostly for post-LN transformers: their gradients near the output are "
             "large at initialization, and without warmup a high learning rate breaks them; pre-LN trains without it")
    source = "Xiong et al. 2020 (On Layer Normalization in the Transformer Architecture) §3; the seed lesson §12.6"
    cost = {"smoke": "about 5 s", "small": "4 min on the shared 2-core CPU (4 runs)", "full": "4 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx), **{"optim.lr": ctx.pick(2e-2, 1e-2, 3e-3),
                                                    "model.n_layer": ctx.pick(2, 4, 12)})
        runs = {}
        for norm in ("pre", "post"):
            for warm in (base.optim.warmup_steps, 0):
                runs[f"{norm}-{'warmup' if warm else 'nowarmup'}"] = with_changes(
                    base, **{"model.norm": norm, "optim.warmup_steps": warm})
        return runs

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            torch.manual_seed(cfg.train.seed)  # the run's own initialization (training/loop.py builds it so)
            model = GPT(cfg.model)
            x, y = BatchSampler(TokenData(cfg.data.path, "train"), cfg.model.block_size, cfg.train.seed).batch(
                0, cfg.train.batch_size)
            loss = final_eval(run)["loss"]
            out[name] = {"norm": cfg.model.norm, "warmup_steps": cfg.optim.warmup_steps, "val_loss": loss,
                         "diverged": divergence(loss, cfg.model.vocab_size), "grad_norms_init": layer_grad_norms(
                             model, x, y), "curve": curve(run), "train": curve(run, "train")}
        return {"variants": out, "lr": next(iter(runs.values())).config.optim.lr}

    def setup(self, f: dict) -> str:
        v = f["variants"]["pre-warmup"]
        return (f"the same model with model.norm pre and post, at lr {f['lr']:g} (peak), with "
                f"{v['warmup_steps']} warmup steps or none; gradient norms per layer of the first batch at "
                "initialization; 'diverged' by nextoken's rule (non-finite, or worse than a uniform guess).")

    def table(self, f: dict):
        rows = []
        for n, v in f["variants"].items():
            g = v["grad_norms_init"]
            blocks = [g[k] for k in g if k.startswith("block")]
            rows.append([n, v["norm"], v["warmup_steps"], v["val_loss"], v["diverged"] or "no",
                         f"{blocks[0]:.3g} / {blocks[-1]:.3g}", f"{g['head']:.3g}" if "head" in g else "- (none)"])
        return ["run", "norm", "warmup steps", "final val loss", "diverged", "init grad norm first / last block",
                "init grad norm head"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for name, v in f["variants"].items():
            ax1.plot(v["train"]["step"], v["train"]["loss"], lw=1, label=name)
        ax1.set_xlabel("step")
        ax1.set_ylabel("train loss (nats)")
        ax1.legend()
        for norm in ("pre", "post"):
            g = f["variants"][f"{norm}-warmup"]["grad_norms_init"]
            keys = [k for k in g if k.startswith("block")]
            ax2.plot(range(len(keys)), [g[k] for k in keys], "o-", label=f"{norm}-LN")
        ax2.set_xlabel("block (0: nearest the input)")
        ax2.set_ylabel("gradient norm at init")
        ax2.set_yscale("log")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        v = f["variants"]

        def gain(norm: str) -> float:
            return v[f"{norm}-nowarmup"]["val_loss"] - v[f"{norm}-warmup"]["val_loss"]

        gp, gq = gain("pre"), gain("post")
        div = [n for n, x in v.items() if x["diverged"]]
        gap = v["post-warmup"]["val_loss"] - v["pre-warmup"]["val_loss"]
        why = (f"what warmup gained in final val loss: pre-LN {gp:+.4f}, post-LN {gq:+.4f} nats; post-LN trails "
               f"pre-LN by {gap:.3f} nats even with warmup; diverged: "
               f"{', '.join(div) or 'none'} (rule: held if post-LN gains more than {MATTERS} nats more than pre-LN, "
               "or only post-LN without warmup diverges)")
        only_post = div == ["post-nowarmup"]
        if only_post or gq > gp + MATTERS:
            return Verdict(HELD, why)
        if gq <= gp:
            return Verdict(NOT_HELD, why + "; warmup helped post-LN no more than pre-LN at this scale")
        return Verdict(INCONCLUSIVE, why)


EXPERIMENT = Warmup()
