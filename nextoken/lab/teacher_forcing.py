"""teacher-forcing: teacher forcing against training on the model's own predictions (scheduled sampling in its
parallel form, at its free-running extreme), over paired seeds; val loss under teacher forcing, training cost,
and exposure bias scored by a stronger reference model."""

from __future__ import annotations

import torch

from nextoken.data.loader import TokenData, eval_windows
from nextoken.eval.measures import exposure_bias
from nextoken.lab.base import (
    NOT_HELD,
    Context,
    Experiment,
    Verdict,
    base_config,
    curve,
    final_eval,
    held_if_all,
    mean_se,
    paired,
    pm,
    rule_text,
    seeded,
    seeds,
    sign,
    text_data,
    with_changes,
)

ARMS = {"teacher-forced": {}, "free-running": {"train.objective": "scheduled-sampling", "train.sampling_prob": 1.0}}


class TeacherForcing(Experiment):
    name = "teacher-forcing"
    claim = ("feeding the model its own predictions instead of the true tokens during training (no teacher forcing) "
             "compounds its errors and trains a worse model; teacher forcing trains fast but leaves exposure bias: "
             "free-running, what the model generates drifts further from the data the longer it runs")
    source = ("Williams & Zipser 1989 (teacher forcing); Bengio et al. 2015 (scheduled sampling); Ranzato et al. "
              "2016 (exposure bias); He et al. 2021 (Quantifying exposure bias for open-ended language generation)")
    cost = {"smoke": "about 10 s",
            "small": "1.6 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(6 runs of 400 steps and a reference of 800)",
            "full": "7 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx), **{"train.max_steps": ctx.pick(30, 400, 3000)})
        runs = {seeded(arm, s): with_changes(base, **{**changes, "train.seed": s})
                for arm, changes in ARMS.items() for s in seeds(ctx)}
        # the scorer: the teacher-forced model trained twice as long (the reference of exposure-bias measurements)
        runs["reference"] = with_changes(base, **{"train.max_steps": 2 * base.train.max_steps,
                                                  "train.ckpt_every": base.train.max_steps // 2,
                                                  "train.seed": base.train.seed + 100})
        return runs

    def measure(self, ctx: Context, runs) -> dict:
        ref = runs["reference"].load().model
        cfg = runs["reference"].config
        T = cfg.model.block_size
        P, N = T // 4, T - T // 4  # prompt, then continuation to the end of the context
        windows = list(eval_windows(TokenData(cfg.data.path, "val"), T, 0))
        n = ctx.pick(4, 32, 64)
        rows = torch.stack([torch.cat([w[0], w[1][-1:]]) for w in windows[:: max(1, len(windows) // n)][:n]])
        out = {}
        for name, run in runs.items():
            if name == "reference":
                continue
            eb = exposure_bias(run.load().model, ref, rows[:, :P], rows[:, P:P + N], temperature=1.0, seed=0)
            half = len(eb["generated"]) // 2
            drift = (sum(eb["generated"][half:]) - sum(eb["generated"][:half])) / half
            base_drift = (sum(eb["data"][half:]) - sum(eb["data"][:half])) / half
            sampled = run.config.train.objective == "scheduled-sampling"
            # the first pass is one forward without gradient: a third of a training step's FLOPs (fwd + 2x bwd)
            out[name] = {"arm": name.rsplit("-s", 1)[0], "seed": run.config.train.seed,
                         "sampling_prob": run.config.train.sampling_prob if sampled else 0.0,
                         "compute": 4 / 3 if sampled else 1.0, "val_loss": final_eval(run)["loss"],
                         "generated_nll": eb["generated"], "data_nll": eb["data"],
                         "gen_mean": sum(eb["generated"]) / len(eb["generated"]),
                         "data_mean": sum(eb["data"]) / len(eb["data"]),
                         "exposure_bias": drift - base_drift, "curve": curve(run)}
        return {"variants": out, "reference_loss": final_eval(runs["reference"])["loss"], "prompts": len(rows),
                "prompt_tokens": P, "new_tokens": N, "seeds": seeds(ctx)}

    def setup(self, f: dict) -> str:
        return ("the same model and seeds trained with teacher forcing and free-running (train.objective "
                "scheduled-sampling at train.sampling_prob 1: a first pass samples each position's prediction and "
                "every input but the first is replaced by it, so the model only ever sees its own samples, one step "
                "deep; a third more compute per step); the reference is a teacher-forced model trained twice as "
                f"long (val loss {f['reference_loss']:.3f}). Exposure bias: each model continues {f['prompts']} val "
                f"prompts of {f['prompt_tokens']} tokens for {f['new_tokens']} tokens at temperature 1; the "
                "reference scores each generated token; 'drift' is the mean reference NLL of the second half of the "
                "continuation minus the first half, less the same for the data's own continuation (> 0: the "
                "generations wander further from what the reference expects the longer they run).")

    def table(self, f: dict):
        rows = [[n, v["seed"], f"{v['sampling_prob']:g}", v["val_loss"], f"{v.get('compute', 1.0):.2f}",
                 v["gen_mean"], v["exposure_bias"]] for n, v in f["variants"].items()]
        data = next(iter(f["variants"].values())).get("data_mean")
        rows.append(["(the data's own continuation)", "-", "-", "-", "-", data, 0.0])
        return ["run", "seed", "share of own predictions", "val loss (teacher forced)", "compute per step (x teacher "
                "forcing)", "reference NLL of the continuation", "drift (exposure bias)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        colors = {"teacher-forced": "tab:blue", "free-running": "tab:orange"}
        for v in f["variants"].values():
            first = v["seed"] == f["seeds"][0]
            c = colors.get(v["arm"], "tab:green")
            ax1.plot(v["curve"]["step"], v["curve"]["loss"], "-", color=c, label=v["arm"] if first else None)
            ax2.plot(range(1, len(v["generated_nll"]) + 1), _smooth(v["generated_nll"]), color=c, alpha=0.7,
                     label=f"{v['arm']} generations" if first else None)
        data = next(iter(f["variants"].values()))["data_nll"]
        ax2.plot(range(1, len(data) + 1), _smooth(data), "k--", label="the data's continuation")
        ax1.set_xlabel("step")
        ax1.set_ylabel("val loss, teacher forced (nats)")
        ax1.legend()
        ax2.set_xlabel("position in the free-running continuation")
        ax2.set_ylabel("reference NLL (nats, smoothed)")
        ax2.legend(fontsize=8)

    def verdict(self, f: dict) -> Verdict:
        tf, fr = _arm(f, "teacher-forced"), _arm(f, "free-running")
        worse = paired([v["val_loss"] for v in tf], [v["val_loss"] for v in fr])
        drift = mean_se([v["exposure_bias"] for v in tf])
        s1, s2 = sign(worse), sign(drift)
        why = (f"first half, free-running minus teacher-forced val loss {pm(worse)}: {_word(s1)}; second half, the "
               f"drift of the teacher-forced model's generations {pm(drift)}: {_word(s2)} (free-running's drift "
               f"{pm(mean_se([v['exposure_bias'] for v in fr]))}); rule: each half {rule_text()}, held if both "
               "held")
        outcome = held_if_all(s1, s2)
        if outcome == NOT_HELD and s1 > 0:
            why += "; the first half held, the exposure bias was not seen at this scale"
        return Verdict(outcome, why)


def _arm(f: dict, arm: str) -> list[dict]:
    return sorted((v for v in f["variants"].values() if v["arm"] == arm), key=lambda v: v["seed"])


def _word(s: int) -> str:
    return {1: "held", -1: "did not hold", 0: "undecided"}[s]


def _smooth(xs: list[float], k: int = 5) -> list[float]:
    return [sum(xs[max(0, i - k):i + k + 1]) / len(xs[max(0, i - k):i + k + 1]) for i in range(len(xs))]


EXPERIMENT = TeacherForcing()
