"""weight-tying: the input embedding shared with the output projection (Press & Wolf 2017) against two
matrices, at the same compute (the output matmul costs the same either way), over paired seeds, on subword
tokens (a 4096-token BPE vocabulary: the setting of the claim, where V x d is a large share of the model)."""

from __future__ import annotations

from nextoken.lab.base import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Context,
    Experiment,
    Verdict,
    base_config,
    bpe_data,
    curve,
    final_eval,
    paired,
    pm,
    rule_text,
    seeded,
    seeds,
    sign,
    with_changes,
)
from nextoken.model.counting import param_counts, training_flops_per_token


class WeightTying(Experiment):
    name = "weight-tying"
    claim = "tying the input and output embeddings saves V x d parameters and improves the model"
    source = "Press & Wolf 2017 (Using the Output Embedding to Improve Language Models); Inan et al. 2017"
    cost = {"smoke": "about 8 s",
            "small": "1.5 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(6 runs of 300 BPE steps)",
            "full": "6 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, bpe_data(ctx), **{"train.max_steps": ctx.pick(30, 300, 3000)})
        return {seeded(arm, s): with_changes(base, **{"model.tie_embeddings": arm == "tied", "train.seed": s})
                for arm in ("tied", "untied") for s in seeds(ctx)}

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            m = run.config.model
            counts = param_counts(m)
            out[name] = {"tied": m.tie_embeddings, "seed": run.config.train.seed, "params": counts.total,
                         "non_embedding": counts.non_embedding, "flops_per_token": training_flops_per_token(m),
                         "val_loss": final_eval(run)["loss"], "curve": curve(run)}
        m = next(iter(runs.values())).config.model
        return {"variants": out, "vocab_size": m.vocab_size, "d_model": m.d_model, "seeds": seeds(ctx),
                "tokenizer": "bytes" if ctx.smoke else "bpe"}

    def setup(self, f: dict) -> str:
        return (f"the same model (d = {f['d_model']}, V = {f['vocab_size']}, {f.get('tokenizer', 'bytes')} tokens) "
                "with model.tie_embeddings true and false, the same steps, data order and seeds.")

    def table(self, f: dict):
        rows = [[n, "yes" if v["tied"] else "no", v.get("seed", "-"), f"{v['params']:,}",
                 f"{v['flops_per_token']:.3g}", v["val_loss"]] for n, v in f["variants"].items()]
        return ["run", "tied", "seed", "parameters", "training FLOPs/token", "val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for name, v in f["variants"].items():
            ax1.plot(v["curve"]["step"], v["curve"]["loss"], "-", color="tab:blue" if v["tied"] else "tab:orange",
                     label=name)
        ax1.set_xlabel("step")
        ax1.set_ylabel("val loss (nats)")
        ax1.legend(fontsize=8)
        tied, untied = _arm(f, True), _arm(f, False)
        gaps = [u["val_loss"] - t["val_loss"] for t, u in zip(tied, untied, strict=True)]
        ax2.plot([v["seed"] for v in tied], gaps, "o")
        ax2.axhline(0, color="k", ls=":")
        ax2.set_xlabel("seed")
        ax2.set_ylabel("untied minus tied val loss (nats; > 0: tying helps)")

    def verdict(self, f: dict) -> Verdict:
        tied, untied = _arm(f, True), _arm(f, False)
        saved = untied[0]["params"] - tied[0]["params"]
        gain = paired([v["val_loss"] for v in tied], [v["val_loss"] for v in untied])
        why = (f"tying saved {saved:,} parameters (V x d = {f['vocab_size'] * f['d_model']:,}) at equal FLOPs; "
               f"untied minus tied val loss {pm(gain)} (rule: 'improves' {rule_text()}, in either direction)")
        if saved != f["vocab_size"] * f["d_model"]:
            return Verdict(NOT_HELD, why + "; the saving is not V x d")
        s = sign(gain)
        if s > 0:
            return Verdict(HELD, why)
        if s < 0:
            return Verdict(NOT_HELD, why + "; the saving holds, but the untied model scored better")
        return Verdict(INCONCLUSIVE, why + "; the saving holds, the gain is within its noise")


def _arm(f: dict, tied: bool) -> list[dict]:
    return sorted((v for v in f["variants"].values() if v["tied"] == tied), key=lambda v: v["seed"])


EXPERIMENT = WeightTying()
