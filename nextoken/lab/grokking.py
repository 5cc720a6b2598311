"""grokking: modular addition with a small transformer, full batch, AdamW with strong weight decay against
none: train and val accuracy and the weight norm over training."""

from __future__ import annotations

import math

import torch

from nextoken.data.loader import ExampleSampler, TokenData
from nextoken.data.synthetic import modular_addition
from nextoken.lab.base import (
    INCONCLUSIVE,
    Context,
    Experiment,
    Verdict,
    base_config,
    held_if_all,
    mean_se,
    paired,
    pm,
    rule_text,
    seeded,
    seeds,
    sign,
    with_changes,
)

MEMORIZED, GENERALIZED = 0.99, 0.9  # train accuracy that counts as memorized; val accuracy that counts as grokked
LATE = 2.0  # "long after": val reaches GENERALIZED at least this many times later than train reaches MEMORIZED


class Grokking(Experiment):
    name = "grokking"
    claim = ("on a small algorithmic task a network first memorizes its training set, then, long after train "
             "accuracy reached 100%, suddenly generalizes; weight decay drives it")
    source = ("Power et al. 2022 (Grokking: generalization beyond overfitting on small algorithmic datasets); "
              "Nanda et al. 2023 (Progress measures for grokking via mechanistic interpretability)")
    cost = {"smoke": "about 6 s",
            "small": "1.6 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(6 runs of 1000 full-batch steps)",
            "full": "6 GPU runs (p = 113)"}

    def data(self, ctx: Context):
        p = ctx.pick(11, 31, 113)
        return modular_addition(ctx.out / f"data-mod{p}", p=p, train_fraction=0.5)

    def variants(self, ctx: Context):
        data = self.data(ctx)
        n_train = TokenData(data, "train").n_tokens // 6
        steps = ctx.pick(40, 1000, 20000)
        every = max(1, steps // 30)
        base = base_config(ctx, data, **{
            "model.n_layer": 1, "model.n_head": 4, "model.d_model": ctx.pick(32, 64, 128), "model.block_size": 5,
            "train.batch_size": n_train, "train.max_steps": steps, "train.eval_tokens": 0,
            "train.eval_every": every, "train.ckpt_every": every, "train.keep": 40,
            "optim.lr": ctx.pick(1e-3, 3e-3, 1e-3), "optim.beta2": 0.98, "optim.warmup_steps": 10,
            "optim.schedule": "constant",
            "optim.grad_clip": 0.0, "optim.weight_decay": 1.0})
        # the examples are the full batch every step, so a seed sets the initialization alone
        return {seeded(f"wd{wd:g}", s): with_changes(base, **{"optim.weight_decay": wd, "train.seed": s})
                for wd in (1.0, 0.0) for s in seeds(ctx)}

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            splits = {s: ExampleSampler(TokenData(cfg.data.path, s), 5, 0) for s in ("train", "val")}
            points = []
            for path in run.checkpoints():
                loaded = run.load(int(path.name.split("_")[1]))
                acc = {s: _accuracy(loaded.model, sp) for s, sp in splits.items()}
                norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in loaded.model.parameters()))
                points.append({"step": loaded.step, "train_acc": acc["train"], "val_acc": acc["val"],
                               "weight_norm": norm})
            out[name] = {"weight_decay": cfg.optim.weight_decay, "seed": cfg.train.seed, "points": points}
        cfg = next(iter(runs.values())).config
        return {"variants": out, "p": TokenData(cfg.data.path, "train").manifest["examples"]["p"],
                "train_examples": cfg.train.batch_size, "steps": cfg.train.max_steps, "d_model": cfg.model.d_model,
                "lr": cfg.optim.lr, "seeds": seeds(ctx)}

    def setup(self, f: dict) -> str:
        return (f"a + b mod {f['p']}, one token per number; half of the {f['p']}² equations train "
                f"({f['train_examples']}, the full batch every step), half val; 1 layer x {f['d_model']}, 4 heads; "
                f"AdamW lr {f.get('lr', 1e-3):g}, betas (0.9, 0.98), weight decay 1.0 or 0, constant LR after 10 "
                "warmup steps, "
                f"{f['steps']} steps; accuracy of the answer token at each checkpoint (every 1/30 of the run).")

    def table(self, f: dict):
        rows = []
        for n, v in f["variants"].items():
            t_mem, t_gen = _first(v["points"], "train_acc", MEMORIZED), _first(v["points"], "val_acc", GENERALIZED)
            last = v["points"][-1]
            rows.append([n, f"{v['weight_decay']:g}", str(t_mem or "never"), str(t_gen or "never"),
                         last["train_acc"], last["val_acc"], last["weight_norm"]])
        return ["run", "weight decay", f"step train acc ≥ {MEMORIZED}", f"step val acc ≥ {GENERALIZED}",
                "final train acc", "final val acc", "final weight norm"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for n, v in f["variants"].items():
            s = [p["step"] for p in v["points"]]
            c = "tab:blue" if v["weight_decay"] else "tab:orange"
            first = v.get("seed", 0) == f.get("seeds", [0])[0]
            ax1.plot(s, [p["train_acc"] for p in v["points"]], "--", color=c, alpha=0.7,
                     label=f"weight decay {v['weight_decay']:g}, train" if first else None)
            ax1.plot(s, [p["val_acc"] for p in v["points"]], "-", color=c, alpha=0.7,
                     label=f"weight decay {v['weight_decay']:g}, val" if first else None)
            ax2.plot(s, [p["weight_norm"] for p in v["points"]], "-", color=c, alpha=0.7, label=n)
        ax1.set_xlabel("step")
        ax1.set_ylabel("accuracy of the answer")
        ax1.legend()
        ax2.set_xlabel("step")
        ax2.set_ylabel("weight norm (L2, all parameters)")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        wd1 = sorted((v for v in f["variants"].values() if v["weight_decay"]), key=lambda v: v.get("seed", 0))
        wd0 = sorted((v for v in f["variants"].values() if not v["weight_decay"]), key=lambda v: v.get("seed", 0))
        rule = (f"(rule: held if, with weight decay, val accuracy reaches {GENERALIZED} more than {LATE:g}x later than "
                f"train accuracy reaches {MEMORIZED} (the log2 of that delay ratio minus log2 {LATE:g} above zero), "
                f"and weight decay raises the final val accuracy, each {rule_text()})")
        t_mem = [_first(v["points"], "train_acc", MEMORIZED) for v in wd1]
        t_gen = [_first(v["points"], "val_acc", GENERALIZED) for v in wd1]
        if None in t_mem:
            return Verdict(INCONCLUSIVE, f"with weight decay, train accuracy did not reach {MEMORIZED} in every seed: "
                           f"nothing memorized yet at this budget {rule}")
        if None in t_gen:
            return Verdict(INCONCLUSIVE, f"memorized by steps {t_mem}, but with weight decay val accuracy reached "
                           f"{GENERALIZED} only in {sum(t is not None for t in t_gen)} of {len(t_gen)} seeds in "
                           f"{f['steps']} steps; grokking may come later {rule}")
        late = mean_se([math.log2(g / m) - math.log2(LATE) for g, m in zip(t_gen, t_mem, strict=True)])
        drives = paired([v["points"][-1]["val_acc"] for v in wd0], [v["points"][-1]["val_acc"] for v in wd1])
        t_gen0 = [_first(v["points"], "val_acc", GENERALIZED) for v in wd0]
        why = (f"with weight decay: memorized at steps {t_mem}, generalized at steps {t_gen}: log2(delay ratio) minus "
               f"log2 {LATE:g} = {pm(late, unit='')}; without: generalized at "
               f"{[t if t else 'never' for t in t_gen0]}; final val accuracy with minus without weight decay "
               f"{pm(drives, unit='')} {rule}")
        return Verdict(held_if_all(sign(late), sign(drives)), why)


def _first(points: list[dict], key: str, level: float) -> int | None:
    return next((p["step"] for p in points if p[key] >= level), None)


@torch.no_grad()
def _accuracy(model, sampler: ExampleSampler) -> float:
    x, y = sampler.rows[:, :-1], sampler.rows[:, 1:]
    cols = sampler.keep.nonzero().flatten()
    pred = model(x).argmax(-1)
    return float((pred[:, cols] == y[:, cols]).float().mean())


EXPERIMENT = Grokking()
