"""teacher-forcing: teacher forcing against training on the model's own predictions (scheduled sampling in its
parallel form, and its free-running extreme); val loss under teacher forcing, training cost, and exposure bias
scored by a stronger reference model."""

from __future__ import annotations

import torch

from nextoken.data.loader import TokenData, eval_windows
from nextoken.eval.measures import exposure_bias
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

WORSE = 0.05  # nats: "worse" means worse by more than this


class TeacherForcing(Experiment):
    name = "teacher-forcing"
    claim = ("feeding the model its own predictions instead of the true tokens during training (no teacher forcing) "
             "compounds its errors and trains a worse model; teacher forcing trains fast but leaves exposure bias: "
             "free-running, what the model generates drifts further from the data the longer it runs")
    source = "Williams & Zipser 1989; Bengio et al. 2015 (scheduled sampling); Mihaylova & Martins 2019; the seed page"
    cost = {"smoke": "about 6 s", "small": "2-5 min on the shared 2-core CPU (4 runs)", "full": "4 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx))
        ss = {"train.objective": "scheduled-sampling"}
        return {"teacher-forced": base,
                "scheduled-sampling": with_changes(base, **ss, **{"train.sampling_prob": 0.25}),
                "free-running": with_changes(base, **ss, **{"train.sampling_prob": 1.0}),
                # the scorer: the same model trained twice as long (the reference of exposure-bias measurements)
                "reference": with_changes(base, **{"train.max_steps": 2 * base.train.max_steps,
                                                   "train.ckpt_every": base.train.max_steps // 2})}

    def measure(self, ctx: Context, runs) -> dict:
        ref = runs["reference"].load().model
        cfg = runs["teacher-forced"].config
        T = cfg.model.block_size
        P, N = T // 4, T - T // 4  # prompt, then continuation to the end of the context
        windows = list(eval_windows(TokenData(cfg.data.path, "val"), T, 0))
        n = ctx.pick(4, 24, 64)
        rows = torch.stack([torch.cat([w[0], w[1][-1:]]) for w in windows[:: max(1, len(windows) // n)][:n]])
        out = {}
        for name in ("teacher-forced", "scheduled-sampling", "free-running"):
            run = runs[name]
            eb = exposure_bias(run.load().model, ref, rows[:, :P], rows[:, P:P + N], temperature=1.0, seed=0)
            last = run.last_per_step("train")[-1]
            half = len(eb["generated"]) // 2
            drift = (sum(eb["generated"][half:]) - sum(eb["generated"][:half])) / half
            base_drift = (sum(eb["data"][half:]) - sum(eb["data"][:half])) / half
            sampled = run.config.train.objective == "scheduled-sampling"
            # the first pass is one forward without gradient: a third of a training step's FLOPs (fwd + 2x bwd)
            out[name] = {"sampling_prob": run.config.train.sampling_prob if sampled else 0.0,
                         "compute": 4 / 3 if sampled else 1.0,
                         "val_loss": final_eval(run)["loss"], "elapsed_s": last["elapsed_s"],
                         "tokens_per_s": last["tokens"] / last["elapsed_s"], "generated_nll": eb["generated"],
                         "data_nll": eb["data"], "gen_mean": sum(eb["generated"]) / len(eb["generated"]),
                         "data_mean": sum(eb["data"]) / len(eb["data"]),
                         "exposure_bias": drift - base_drift, "curve": curve(run)}
        return {"variants": out, "reference_loss": final_eval(runs["reference"])["loss"], "prompts": len(rows),
                "prompt_tokens": P, "new_tokens": N}

    def setup(self, f: dict) -> str:
        return (f"the same model trained with teacher forcing, with scheduled sampling (train.objective "
                "scheduled-sampling: a first pass samples each position's prediction, and 25% of the inputs are "
                "replaced by them) and free-running (100% replaced: the model only ever sees its own samples, one step "
                f"deep); the reference is the teacher-forced model trained twice as long (val loss "
                f"{f['reference_loss']:.3f}). Exposure bias: each model continues {f['prompts']} val prompts of "
                f"{f['prompt_tokens']} tokens for {f['new_tokens']} tokens at temperature 1; the reference scores each "
                "generated token; 'drift' is the mean reference NLL of the second half of the continuation minus the "
                "first half, less the same for the data's own continuation.")

    def table(self, f: dict):
        rows = [[n, f"{v['sampling_prob']:g}", v["val_loss"], f"{v.get('compute', 1.0):.2f}",
                 f"{v['tokens_per_s']:.0f}", v["gen_mean"], v["exposure_bias"]] for n, v in f["variants"].items()]
        data = next(iter(f["variants"].values())).get("data_mean")
        if data is not None:
            rows.append(["(the data's own continuation)", "-", "-", "-", "-", data, 0.0])
        return ["run", "share of own predictions", "val loss (teacher forced)", "compute per step (x teacher "
                "forcing)", "measured train tokens/s (shared box)", "reference NLL of the continuation",
                "drift (exposure bias)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for n, v in f["variants"].items():
            ax1.plot(v["curve"]["step"], v["curve"]["loss"], "o-", label=n)
            ax2.plot(range(1, len(v["generated_nll"]) + 1), _smooth(v["generated_nll"]), label=f"{n} generations")
        data = next(iter(f["variants"].values()))["data_nll"]
        ax2.plot(range(1, len(data) + 1), _smooth(data), "k--", label="the data's continuation")
        ax1.set_xlabel("step")
        ax1.set_ylabel("val loss, teacher forced (nats)")
        ax1.legend()
        ax2.set_xlabel("position in the free-running continuation")
        ax2.set_ylabel("reference NLL (nats, smoothed)")
        ax2.legend(fontsize=8)

    def verdict(self, f: dict) -> Verdict:
        v = f["variants"]
        tf, fr, ss = v["teacher-forced"], v["free-running"], v["scheduled-sampling"]
        why = (f"val loss: teacher-forced {tf['val_loss']:.4f}, scheduled sampling {ss['val_loss']:.4f}, free-running "
               f"{fr['val_loss']:.4f}; scheduled sampling costs {ss.get('compute', 4 / 3):.2f}x the compute per step; "
               f"drift of the generations: {tf['exposure_bias']:+.3f} / {ss['exposure_bias']:+.3f} / "
               f"{fr['exposure_bias']:+.3f} nats (rule: held if free-running ends more than {WORSE} nats worse than "
               "teacher forcing)")
        if all(x["exposure_bias"] <= 0 for x in (tf, ss, fr)):
            why += "; no run's generations drifted away from the data with the position (no exposure bias seen)"
        if fr["val_loss"] > tf["val_loss"] + WORSE:
            return Verdict(HELD, why)
        if fr["val_loss"] < tf["val_loss"] - WORSE:
            return Verdict(NOT_HELD, why)
        return Verdict(INCONCLUSIVE, why)


def _smooth(xs: list[float], k: int = 5) -> list[float]:
    return [sum(xs[max(0, i - k):i + k + 1]) / len(xs[max(0, i - k):i + k + 1]) for i in range(len(xs))]


EXPERIMENT = TeacherForcing()
