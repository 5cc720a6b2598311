"""label-smoothing: ε = 0, 0.1, 0.3 on the same model and data, each over paired seeds; val cross-entropy scored
without smoothing, calibration (ECE, reliability diagram), mean confidence and the entropy of the predictions."""

from __future__ import annotations

from nextoken.data.loader import TokenData
from nextoken.eval.measures import calibration, token_predictions
from nextoken.lab.base import (
    Context,
    Experiment,
    Verdict,
    base_config,
    curve,
    final_eval,
    held_if_all,
    paired,
    pm,
    rule_text,
    seeded,
    seeds,
    sign,
    text_data,
    with_changes,
)

EPSILONS = (0.0, 0.1, 0.3)


class LabelSmoothing(Experiment):
    name = "label-smoothing"
    claim = ("label smoothing at ε = 0.3 is too aggressive for a language model: it raises the cross-entropy the "
             "model is scored on, and it makes the model less confident than it is accurate (under-confident)")
    source = ("Szegedy et al. 2016 §7 (label smoothing); Müller et al. 2019 (When does label smoothing help?) on "
              "calibration; Pereyra et al. 2017 on confidence penalties")
    cost = {"smoke": "about 10 s",
            "small": "1.3 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(9 runs of 400 steps)",
            "full": "9 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx), **{"train.max_steps": ctx.pick(30, 400, 3000)})
        return {seeded(f"eps{e}", s): with_changes(base, **{"train.label_smoothing": e, "train.seed": s})
                for e in EPSILONS for s in seeds(ctx)}

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            preds = token_predictions(run.load().model, TokenData(cfg.data.path, "val"), cfg.model.block_size,
                                      cfg.train.eval_tokens)
            cal = calibration(preds["confidence"], preds["correct"])
            conf, acc = float(preds["confidence"].mean()), float(preds["correct"].mean())
            out[name] = {"epsilon": cfg.train.label_smoothing, "seed": cfg.train.seed,
                         "val_loss": final_eval(run)["loss"], "ece": cal["ece"], "bins": cal["bins"],
                         "entropy": float(preds["entropy"].mean()), "confidence": conf, "accuracy": acc,
                         "overconfidence": conf - acc, "curve": curve(run)}
        return {"variants": out, "seeds": seeds(ctx), "epsilons": list(EPSILONS)}

    def setup(self, f: dict) -> str:
        return ("the same model, data order and seeds for each ε (train.label_smoothing), trained past the byte-level "
                "plateau; val cross-entropy from the unsmoothed softmax; ECE over 10 equal-width confidence bins of "
                "the top-1 prediction; over-confidence = mean top-1 confidence minus top-1 accuracy (negative: "
                "under-confident).")

    def table(self, f: dict):
        rows = []
        for e in f["epsilons"]:
            arm = _arm(f, e)
            rows.append([f"ε = {e:g}", *(_ms([v[k] for v in arm]) for k in
                                         ("val_loss", "ece", "confidence", "accuracy", "overconfidence", "entropy"))])
        for e in f["epsilons"][1:]:
            d = {k: paired([v[k] for v in _arm(f, 0.0)], [v[k] for v in _arm(f, e)])
                 for k in ("val_loss", "ece", "confidence", "accuracy", "overconfidence", "entropy")}
            rows.append([f"ε = {e:g} minus ε = 0 (paired)",
                         *(f"{d[k]['mean']:+.4f} ± {d[k]['se']:.4f}" if d[k]["se"] is not None else
                           f"{d[k]['mean']:+.4f}" for k in d)])
        return ["ε (mean over seeds)", "val CE (nats)", "ECE", "mean confidence", "top-1 accuracy",
                "over-confidence", "mean entropy (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        colors = {e: c for e, c in zip(f["epsilons"], ("tab:blue", "tab:orange", "tab:green"), strict=True)}
        for v in f["variants"].values():
            c = v["curve"]
            first = v["seed"] == f["seeds"][0]
            ax1.plot(c["step"], c["loss"], "-", color=colors[v["epsilon"]], alpha=0.8,
                     label=f"ε = {v['epsilon']:g}" if first else None)
            if first:
                bins = [b for b in v["bins"] if b["count"]]
                ax2.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                         color=colors[v["epsilon"]], label=f"ε = {v['epsilon']:g} (ECE {v['ece']:.3f})")
        ax1.set_xlabel("step")
        ax1.set_ylabel("val cross-entropy (nats), one line per seed")
        ax1.legend()
        ax2.plot([0, 1], [0, 1], "k:", label="calibrated")
        ax2.set_xlabel("confidence (top-1 probability)")
        ax2.set_ylabel("accuracy")
        ax2.set_title(f"reliability diagram (seed {f['seeds'][0]})")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        zero, hi = _arm(f, 0.0), _arm(f, 0.3)
        loss = paired([v["val_loss"] for v in zero], [v["val_loss"] for v in hi])
        under = paired([v["overconfidence"] for v in zero], [v["overconfidence"] for v in hi])
        s_loss, s_under = sign(loss), -sign(under)  # +1: the claim's direction
        why = (f"loss: val CE at ε = 0.3 minus ε = 0 {pm(loss)}; calibration: over-confidence (confidence minus "
               f"accuracy) at ε = 0.3 minus ε = 0 {pm(under, unit='')}, from {_mean(zero, 'overconfidence'):+.3f} to "
               f"{_mean(hi, 'overconfidence'):+.3f} (ECE {_mean(zero, 'ece'):.3f} → {_mean(hi, 'ece'):.3f}); "
               f"rule: each part {rule_text()}, held if both move the claim's way")
        parts = f"loss part {_word(s_loss)}, calibration part {_word(s_under)}"
        return Verdict(held_if_all(s_loss, s_under), why + f"; {parts}")


def _arm(f: dict, e: float) -> list[dict]:
    return [v for v in f["variants"].values() if v["epsilon"] == e]


def _mean(arm: list[dict], key: str) -> float:
    return sum(v[key] for v in arm) / len(arm)


def _ms(xs: list[float]) -> str:
    return f"{sum(xs) / len(xs):.4f}"


def _word(s: int) -> str:
    return {1: "held", -1: "did not hold", 0: "undecided"}[s]


EXPERIMENT = LabelSmoothing()
