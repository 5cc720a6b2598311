"""z-loss: with and without PaLM's auxiliary loss on log Z, the softmax normalizer, at a high learning rate:
mean log Z over training, spikes detected, final loss."""

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
    curve,
    final_eval,
    text_data,
    with_changes,
)

COEFS = (0.0, 1e-4, 1e-2)  # none, PaLM's, and a hundred times it


class ZLoss(Experiment):
    name = "z-loss"
    claim = ("z-loss, 1e-4 log² Z added to the loss, keeps the softmax normalizer log Z near 0 and so the logits "
             "in check, making training more stable at a high learning rate")
    source = "Chowdhery et al. 2022 (PaLM) §5; the seed page's spike note"
    cost = {"smoke": "about 5 s", "small": "3 min on the shared 2-core CPU (3 runs)", "full": "3 GPU runs"}

    def variants(self, ctx: Context):
        steps = ctx.pick(30, 200, 3000)
        base = base_config(ctx, text_data(ctx), **{"optim.lr": ctx.pick(3e-2, 2e-2, 1e-2),
                                                    "train.ckpt_every": max(1, steps // 6), "train.keep": 7,
                                                    "stability.window": ctx.pick(10, 50, 100)})
        return {f"z{c:g}": with_changes(base, **{"train.z_loss": c}) for c in COEFS}

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            val = TokenData(cfg.data.path, "val")
            log_z = []
            for path in run.checkpoints():  # mean log Z on the val windows at each kept checkpoint
                loaded = run.load(int(path.name.split("_")[1]))
                preds = token_predictions(loaded.model, val, cfg.model.block_size, min(cfg.train.eval_tokens, 8192))
                log_z.append([loaded.step, float(preds["log_z"].mean()), float(preds["log_z"].pow(2).mean())])
            spikes = [e for e in run.events if e.get("type") in ("spike", "nan")]
            out[name] = {"z_loss": cfg.train.z_loss, "val_loss": final_eval(run)["loss"], "log_z": log_z,
                         "spikes": len(spikes), "spike_steps": [e["step"] for e in spikes],
                         "lr": cfg.optim.lr, "train": curve(run, "train")}
        return {"variants": out, "log_V": math.log(runs["z0"].config.model.vocab_size)}

    def setup(self, f: dict) -> str:
        lr = next(iter(f["variants"].values()))["lr"]
        return (f"the same model at lr {lr:g} (several times the default) with train.z_loss 0, 1e-4 (PaLM) and 1e-2; "
                "mean log Z over val positions at each checkpoint; spikes as the stability detector flags them "
                f"(policy warn: logged, not acted on). A model at init has log Z ≈ log V = {f['log_V']:.2f}.")

    def table(self, f: dict):
        rows = [[n, f"{v['z_loss']:g}", f"{v['log_z'][-1][1]:.3f}", v["spikes"], v["val_loss"]]
                for n, v in f["variants"].items()]
        return ["run", "z-loss coef", "final mean log Z", "spikes detected", "val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for v in f["variants"].values():
            ax1.plot([r[0] for r in v["log_z"]], [r[1] for r in v["log_z"]], "o-", label=f"z-loss {v['z_loss']:g}")
            ax2.plot(v["train"]["step"], v["train"]["loss"], lw=1, label=f"z-loss {v['z_loss']:g}")
            for s in v["spike_steps"]:
                ax2.axvline(s, color="tab:red", alpha=0.2)
        ax1.axhline(0, color="k", ls=":")
        ax1.set_xlabel("step")
        ax1.set_ylabel("mean log Z (val)")
        ax1.legend()
        ax2.set_xlabel("step")
        ax2.set_ylabel("train loss (nats); red: spikes")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        v = f["variants"]
        none, palm = abs(v["z0"]["log_z"][-1][1]), abs(v["z0.0001"]["log_z"][-1][1])
        strong = abs(v["z0.01"]["log_z"][-1][1])
        why = (f"final |mean log Z|: {none:.3f} without, {palm:.3f} at 1e-4, {strong:.3f} at 1e-2; spikes "
               f"{v['z0']['spikes']} / {v['z0.0001']['spikes']} / {v['z0.01']['spikes']}; val loss "
               f"{v['z0']['val_loss']:.4f} / {v['z0.0001']['val_loss']:.4f} / {v['z0.01']['val_loss']:.4f} "
               "(rule: held if PaLM's 1e-4 at least halves |log Z|)")
        if palm <= none / 2:
            return Verdict(HELD, why)
        if palm >= none:
            return Verdict(NOT_HELD, why + "; 1e-4 did not pull log Z toward 0 here"
                           + (" (1e-2 did)" if strong <= none / 2 else ""))
        return Verdict(INCONCLUSIVE, why + "; 1e-4 moved log Z less than the rule asks"
                       + (" (1e-2 did)" if strong <= none / 2 else ""))


EXPERIMENT = ZLoss()
