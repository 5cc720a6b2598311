"""label-smoothing: ε = 0, 0.1, 0.3 on the same model and data; val cross-entropy scored without smoothing,
calibration (ECE, reliability diagram) and the mean entropy of the predictions."""

from __future__ import annotations

from nextoken.data.loader import TokenData
from nextoken.eval.measures import calibration, token_predictions
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

EPSILONS = (0.0, 0.1, 0.3)


class LabelSmoothing(Experiment):
    name = "label-smoothing"
    claim = ("label smoothing at ε = 0.3 is too aggressive: it hurts the cross-entropy the model is scored on, "
             "while making it less confident")
    source = "the seed lesson's 'break it' toggle; Szegedy et al. 2016 §7; Müller et al. 2019 on calibration"
    cost = {"smoke": "about 5 s", "small": "8 min on the shared 2-core CPU (4 runs)", "full": "4 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx))
        runs = {f"eps{e}": with_changes(base, **{"train.label_smoothing": e}) for e in EPSILONS}
        runs["eps0.0-seed2"] = with_changes(base, **{"train.seed": base.train.seed + 1})  # the seed scatter
        return runs

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            preds = token_predictions(run.load().model, TokenData(cfg.data.path, "val"), cfg.model.block_size,
                                      cfg.train.eval_tokens)
            cal = calibration(preds["confidence"], preds["correct"])
            out[name] = {"epsilon": cfg.train.label_smoothing, "val_loss": final_eval(run)["loss"],
                         "ece": cal["ece"], "bins": cal["bins"], "entropy": float(preds["entropy"].mean()),
                         "confidence": float(preds["confidence"].mean()),
                         "accuracy": float(preds["correct"].mean()), "curve": curve(run)}
        return {"variants": out, "scatter": abs(out["eps0.0"]["val_loss"] - out["eps0.0-seed2"]["val_loss"])}

    def setup(self, f: dict) -> str:
        return ("the same model, data and seed for each ε (train.label_smoothing); val cross-entropy from the "
                "unsmoothed softmax; ECE over 10 equal-width confidence bins of the top-1 prediction; ε = 0 "
                "trained twice with different seeds for the scatter.")

    def table(self, f: dict):
        rows = [[n, f"{v['epsilon']:g}", v["val_loss"], v["ece"], v["entropy"], v["confidence"], v["accuracy"]]
                for n, v in f["variants"].items()]
        return ["run", "ε", "val CE (nats)", "ECE", "mean entropy (nats)", "mean confidence", "top-1 accuracy"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for name, v in f["variants"].items():
            c = v["curve"]
            if name.endswith("seed2"):
                ax1.plot(c["step"], c["loss"], "k:", label="ε = 0, another seed (the scatter)")
                continue
            ax1.plot(c["step"], c["loss"], "o-", label=f"ε = {v['epsilon']:g}")
            bins = [b for b in v["bins"] if b["count"]]
            ax2.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                     label=f"ε = {v['epsilon']:g} (ECE {v['ece']:.3f})")
        ax1.set_xlabel("step")
        ax1.set_ylabel("val cross-entropy (nats)")
        ax1.legend()
        ax2.plot([0, 1], [0, 1], "k:", label="calibrated")
        ax2.set_xlabel("confidence (top-1 probability)")
        ax2.set_ylabel("accuracy")
        ax2.set_title("reliability diagram")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        v, s = f["variants"], f["scatter"]
        diff = v["eps0.3"]["val_loss"] - v["eps0.0"]["val_loss"]
        why = (f"val CE at ε = 0.3 minus ε = 0: {diff:+.4f} nats; seed scatter at ε = 0: {s:.4f} (rule: held if the "
               f"difference exceeds the scatter); ECE {v['eps0.0']['ece']:.3f} → {v['eps0.3']['ece']:.3f}, mean "
               f"entropy {v['eps0.0']['entropy']:.3f} → {v['eps0.3']['entropy']:.3f} nats")
        if diff > s:
            return Verdict(HELD, why)
        if diff < -s:
            return Verdict(NOT_HELD, why + "; ε = 0.3 scored better")
        return Verdict(INCONCLUSIVE, why + "; within the scatter")


EXPERIMENT = LabelSmoothing()
