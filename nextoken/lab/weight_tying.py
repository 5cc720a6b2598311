"""weight-tying: the input embedding shared with the output projection (Press & Wolf 2017) against two
matrices, at the same compute (the output matmul costs the same either way)."""

from __future__ import annotations

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
from nextoken.model.counting import param_counts, training_flops_per_token


class WeightTying(Experiment):
    name = "weight-tying"
    claim = "tying the input and output embeddings saves V x d parameters and improves the model"
    source = "Press & Wolf 2017; Inan et al. 2017; the seed lesson's softmax section"
    cost = {"smoke": "about 4 s", "small": "6 min on the shared 2-core CPU (3 runs)", "full": "3 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx))
        return {"tied": base, "tied-seed2": with_changes(base, **{"train.seed": base.train.seed + 1}),
                "untied": with_changes(base, **{"model.tie_embeddings": False})}

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            m = run.config.model
            counts = param_counts(m)
            out[name] = {"tied": m.tie_embeddings, "params": counts.total, "non_embedding": counts.non_embedding,
                         "flops_per_token": training_flops_per_token(m), "val_loss": final_eval(run)["loss"],
                         "curve": curve(run)}
        return {"variants": out, "vocab_size": runs["tied"].config.model.vocab_size,
                "d_model": runs["tied"].config.model.d_model,
                "scatter": abs(out["tied"]["val_loss"] - out["tied-seed2"]["val_loss"])}

    def setup(self, f: dict) -> str:
        return (f"the same model (d = {f['d_model']}, V = {f['vocab_size']}) with model.tie_embeddings true and "
                "false, same data order and steps; the tied model trained twice for the seed scatter.")

    def table(self, f: dict):
        rows = [[n, "yes" if v["tied"] else "no", f"{v['params']:,}", f"{v['flops_per_token']:.3g}", v["val_loss"]]
                for n, v in f["variants"].items()]
        return ["run", "tied", "parameters", "training FLOPs/token", "val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for name, v in f["variants"].items():
            ax1.plot(v["curve"]["step"], v["curve"]["loss"], "o-", label=name)
        ax1.set_xlabel("step")
        ax1.set_ylabel("val loss (nats)")
        ax1.legend()
        names = list(f["variants"])
        ax2.bar(names, [f["variants"][n]["params"] for n in names], color=["tab:blue", "tab:blue", "tab:orange"])
        ax2.set_ylabel("parameters")

    def verdict(self, f: dict) -> Verdict:
        v, s = f["variants"], f["scatter"]
        saved = v["untied"]["params"] - v["tied"]["params"]
        gain = v["untied"]["val_loss"] - v["tied"]["val_loss"]
        why = (f"tying saved {saved:,} parameters (V x d = {f['vocab_size'] * f['d_model']:,}) at equal FLOPs; "
               f"untied minus tied val loss {gain:+.4f} nats, seed scatter {s:.4f} (rule: 'helps' held if the gain "
               "exceeds the scatter)")
        if saved != f["vocab_size"] * f["d_model"]:
            return Verdict(NOT_HELD, why + "; the saving is not V x d")
        if gain > s:
            return Verdict(HELD, why)
        if gain < -s:
            return Verdict(NOT_HELD, why + "; the untied model scored better")
        return Verdict(INCONCLUSIVE, why + "; the saving holds, the gain is within the scatter")


EXPERIMENT = WeightTying()
