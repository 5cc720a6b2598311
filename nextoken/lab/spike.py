"""spike: a loss spike injected into one run (--stability.inject, a learning rate x100 for one step) under
each stability policy, against a clean run."""

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

POLICIES = ("warn", "skip", "rollback")
HURT = 0.02  # nats: below this the unguarded spike did no lasting harm and there is nothing to remedy


class Spike(Experiment):
    name = "spike"
    claim = ("loss spikes happen; restarting from a checkpoint before the spike and skipping the batches around "
             "it (PaLM's remedy) recovers the run")
    source = "Chowdhery et al. 2022 (PaLM) §5.1; the seed page's spike note"
    cost = {"smoke": "about 5 s", "small": "2 min on the shared 2-core CPU (4 runs)", "full": "4 GPU runs"}

    def variants(self, ctx: Context):
        steps = ctx.pick(40, 200, 3000)
        at = int(steps * 0.6)
        base = base_config(ctx, text_data(ctx), **{
            "train.max_steps": steps, "stability.window": ctx.pick(10, 50, 100),
            "stability.rollback_steps": steps // 10, "stability.snapshot_every": max(1, steps // 20),
            "stability.skip_batches": steps // 10, "train.log_every": 1})
        runs = {"clean": base}
        for p in POLICIES:
            runs[p] = with_changes(base, **{"stability.policy": p, "stability.inject": f"lr@{at}x100"})
        return runs

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            events = [e for e in run.events if e.get("type") in ("spike", "nan", "skip", "rollback")]
            out[name] = {"policy": cfg.stability.policy, "inject": cfg.stability.inject,
                         "val_loss": final_eval(run)["loss"], "events": [[e["step"], e["type"]] for e in events],
                         "spikes": sum(e["type"] in ("spike", "nan") for e in events), "train": curve(run, "train")}
        return {"variants": out}

    def setup(self, f: dict) -> str:
        inj = f["variants"]["warn"]["inject"]
        return (f"the same run four times: clean, and with `--stability.inject {inj}` (the learning rate x100 for "
                "one step) under stability.policy warn (log only), skip (drop the update) and rollback (restore a "
                "snapshot a tenth of the run back and skip a tenth of the run's batches).")

    def table(self, f: dict):
        rows = [[n, v["policy"], v["inject"] or "-", v["spikes"], _events(v["events"]), v["val_loss"]]
                for n, v in f["variants"].items()]
        return ["run", "policy", "injected", "spikes detected", "events", "final val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax = fig.subplots(1, 1)
        for name, v in f["variants"].items():
            ax.plot(v["train"]["step"], v["train"]["loss"], lw=1, label=f"{name} (val {v['val_loss']:.3f})")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (nats)")
        ax.set_yscale("log")
        ax.legend()

    def verdict(self, f: dict) -> Verdict:
        v = f["variants"]
        clean, warn, rb = v["clean"]["val_loss"], v["warn"]["val_loss"], v["rollback"]["val_loss"]
        why = (f"final val loss: clean {clean:.4f}, warn {warn:.4f}, skip {v['skip']['val_loss']:.4f}, rollback "
               f"{rb:.4f}; spikes detected under warn: {v['warn']['spikes']} (rule: held if the spike left warn more "
               f"than {HURT} nats behind clean and rollback recovered at least half of that gap)")
        if not v["warn"]["spikes"]:
            return Verdict(INCONCLUSIVE, why + "; the detector saw no spike")
        if warn - clean < HURT:
            return Verdict(INCONCLUSIVE, why + "; the unguarded run recovered by itself, nothing to remedy")
        if rb - clean <= (warn - clean) / 2:
            return Verdict(HELD, why)
        return Verdict(NOT_HELD, why + "; rollback did not recover")


def _events(events: list) -> str:
    """'spike x6 (steps 121-126), rollback x1 (step 121)'."""
    out = []
    for kind in dict.fromkeys(t for _, t in events):
        steps = [s for s, t in events if t == kind]
        where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
        out.append(f"{kind} x{len(steps)} ({where})")
    return ", ".join(out) or "-"


EXPERIMENT = Spike()
