"""z-loss: with and without PaLM's auxiliary loss on log Z, the softmax normalizer, over a sweep of learning
rates (Wortsman et al. 2023): final loss against LR, each arm's LR sensitivity, and the mean log Z."""

from __future__ import annotations

import math

from nextoken.data.loader import TokenData
from nextoken.eval.measures import token_predictions
from nextoken.lab.base import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Context,
    Experiment,
    Verdict,
    base_config,
    draw_sweep,
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

ARMS = {"z0": {"train.z_loss": 0.0}, "z1e-4": {"train.z_loss": 1e-4}}  # none, and PaLM's coefficient
# Hook: q/k-norm, Wortsman et al. 2023's remedy for the other instability (attention logit growth), joins
# this sweep as a third arm {"model.qk_norm": True} once ModelConfig has that field; its verdict then compares
# each remedy's LR sensitivity with z0's, as this one does for z-loss.


class ZLoss(Experiment):
    name = "z-loss"
    claim = ("z-loss, 1e-4 · log² Z added to the loss (Z the softmax normalizer), keeps the output logits from "
             "drifting and so widens the range of learning rates that train: the final loss is less sensitive "
             "to the learning rate")
    source = ("Chowdhery et al. 2022 (PaLM) §5; Wortsman et al. 2023 (Small-scale proxies for large-scale "
              "Transformer training instabilities), on output logit divergence")
    cost = {"smoke": "about 15 s",
            "small": "1.5 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(18 runs of 200 steps)",
            "full": "30 GPU runs"}

    def lrs(self, ctx: Context) -> list[float]:
        return ctx.pick([1e-2, 1e-1], [1e-2, 3e-2, 1e-1], [3e-3, 1e-2, 3e-2, 1e-1, 3e-1])

    def variants(self, ctx: Context):
        # no weight decay: Wortsman et al. saw the output logits diverge without it, the instability z-loss removes
        base = base_config(ctx, text_data(ctx), **{"train.max_steps": ctx.pick(30, 200, 3000),
                                                    "optim.weight_decay": 0.0, "train.eval_tokens":
                                                    ctx.pick(2048, 16384, 1 << 18)})
        return lr_sweep(base, ARMS, self.lrs(ctx), seeds(ctx))

    def measure(self, ctx: Context, runs) -> dict:
        cfg = next(iter(runs.values())).config
        f = sweep_figures(runs, list(ARMS), self.lrs(ctx), seeds(ctx), math.log(cfg.model.vocab_size))
        val = TokenData(cfg.data.path, "val")
        f["log_z"] = {}  # arm -> seed -> mean log Z of the final model at each LR
        for arm in ARMS:
            f["log_z"][arm] = {str(s): [_mean_log_z(runs[f"{arm}-lr{lr:g}-s{s}"], val) for lr in f["lrs"]]
                               for s in f["seeds"]}
        return f

    def setup(self, f: dict) -> str:
        return (f"the same model and seeds with train.z_loss 0 and 1e-4 (PaLM's), at peak learning rates "
                f"{', '.join(f'{x:g}' for x in f['lrs'])}, weight decay 0 (Wortsman et al. 2023 saw the output "
                "logits diverge without it). LR sensitivity (Wortsman et al. 2023): the mean over the swept LRs of "
                "min(final loss, loss at init) minus the best of them; an LR 'trains' when its final loss is within "
                f"{f['within']:g} nats of the best any arm reached at that seed. Mean log Z over val positions of "
                f"each final model; at init log Z ≈ log V = {f['initial_loss']:.2f}.")

    def table(self, f: dict):
        header, rows = sweep_table(f, list(ARMS))
        for row, arm in zip(rows, ARMS, strict=True):
            z = [abs(x) for s in f["log_z"][arm].values() for x in s]
            row.append(f"{sum(z) / len(z):.2f}")
        return header + ["mean |log Z| (all LRs)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        draw_sweep(f, ax1, list(ARMS), {"z0": "no z-loss", "z1e-4": "z-loss 1e-4"})
        for arm, label in (("z0", "no z-loss"), ("z1e-4", "z-loss 1e-4")):
            for j, zs in enumerate(f["log_z"][arm].values()):
                ax2.plot(f["lrs"], zs, "o-", color="tab:blue" if arm == "z0" else "tab:orange", alpha=0.7,
                         label=label if j == 0 else None)
        ax2.axhline(0, color="k", ls=":")
        ax2.set_xscale("log")
        ax2.set_xlabel("peak learning rate")
        ax2.set_ylabel("mean log Z of the final model (val)")
        ax2.legend(fontsize=8)

    def verdict(self, f: dict) -> Verdict:
        seeds_ = list(f["curves"]["z0"])
        sens = {a: f["sensitivity"][a]["values"] for a in ARMS}  # per seed, in seed order
        gain = paired(sens["z1e-4"], sens["z0"])  # > 0: z-loss lowered the sensitivity
        z0 = [abs(x) for s in seeds_ for x in f["log_z"]["z0"][s]]
        z1 = [abs(x) for s in seeds_ for x in f["log_z"]["z1e-4"][s]]
        why = (f"LR sensitivity without minus with z-loss {pm(gain)}; LRs that train: {f['trained']['z0']:.1f} "
               f"without, {f['trained']['z1e-4']:.1f} with, of {len(f['lrs'])}; mean |log Z| "
               f"{sum(z0) / len(z0):.2f} without, {sum(z1) / len(z1):.2f} with (rule: held if z-loss lowers the LR "
               f"sensitivity, {rule_text()})")
        # a remedy can be judged only where the trouble shows: some run without z-loss that lost at least half of
        # its way from the loss at init to the best loss (or diverged), as spike.py asks for a spike that hurt
        init = f["initial_loss"]
        best = min(x for c in f["curves"]["z0"].values() for x in c if math.isfinite(x))
        failed = sum(1 for c in f["curves"]["z0"].values() for x in c if not x <= (init + best) / 2)
        why += (f"; without z-loss {failed} of {len(f['lrs']) * len(seeds_)} runs lost half their way from the loss "
                f"at init ({init:.2f}) to the best ({best:.2f}) (held or not held only if some did)")
        s = sign(gain)
        if not failed:
            return Verdict(INCONCLUSIVE, why + "; no learning rate failed without z-loss: nothing to remedy at "
                           "this scale")
        if s > 0:
            return Verdict(HELD, why)
        if s < 0:
            return Verdict(NOT_HELD, why + "; z-loss made the loss more sensitive to the LR")
        return Verdict(INCONCLUSIVE, why + "; within the noise")


def _mean_log_z(run, val) -> float:
    cfg = run.config
    preds = token_predictions(run.load().model, val, cfg.model.block_size, min(cfg.train.eval_tokens, 4096))
    return float(preds["log_z"].mean())


EXPERIMENT = ZLoss()
