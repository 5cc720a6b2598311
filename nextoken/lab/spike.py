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
    paired,
    pm,
    rule_text,
    seeded,
    seeds,
    sign,
    text_data,
    with_changes,
)

POLICIES = ("warn", "skip", "rollback")


class Spike(Experiment):
    name = "spike"
    claim = ("loss spikes happen; restarting from a checkpoint before the spike and skipping the batches around "
             "it (PaLM's remedy) recovers the run")
    source = "Chowdhery et al. 2022 (PaLM: Scaling Language Modeling with Pathways) §5.1"
    cost = {"smoke": "about 15 s",
            "small": "1.3 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(12 runs of 200 steps)",
            "full": "12 GPU runs"}

    def variants(self, ctx: Context):
        steps = ctx.pick(40, 200, 3000)
        at = int(steps * 0.6)
        base = base_config(ctx, text_data(ctx), **{
            "train.max_steps": steps, "stability.window": ctx.pick(10, 50, 100),
            "stability.rollback_steps": steps // 10, "stability.snapshot_every": max(1, steps // 20),
            "stability.skip_batches": steps // 10, "train.log_every": 1})
        runs = {}
        for s in seeds(ctx):
            runs[seeded("clean", s)] = with_changes(base, **{"train.seed": s})
            for p in POLICIES:
                runs[seeded(p, s)] = with_changes(base, **{"stability.policy": p, "stability.inject": f"lr@{at}x100",
                                                           "train.seed": s})
        return runs

    def measure(self, ctx: Context, runs) -> dict:
        out = {}
        for name, run in runs.items():
            cfg = run.config
            events = [e for e in run.events if e.get("type") in ("spike", "nan", "skip", "rollback")]
            out[name] = {"arm": name.rsplit("-s", 1)[0], "seed": cfg.train.seed, "policy": cfg.stability.policy,
                         "inject": cfg.stability.inject,
                         "val_loss": final_eval(run)["loss"], "events": [[e["step"], e["type"]] for e in events],
                         "spikes": sum(e["type"] in ("spike", "nan") for e in events), "train": curve(run, "train")}
        return {"variants": out, "seeds": seeds(ctx)}

    def setup(self, f: dict) -> str:
        inj = next(v["inject"] for v in f["variants"].values() if v["inject"])
        return (f"the same run four times per seed: clean, and with `--stability.inject {inj}` (the learning rate "
                "x100 for "
                "one step) under stability.policy warn (log only), skip (drop the update) and rollback (restore a "
                "snapshot a tenth of the run back and skip a tenth of the run's batches).")

    def table(self, f: dict):
        rows = [[n, v.get("seed", "-"), v["policy"], v["inject"] or "-", v["spikes"], _events(v["events"]),
                 v["val_loss"]] for n, v in f["variants"].items()]
        return ["run", "seed", "policy", "injected", "spikes detected", "events", "final val loss (nats)"], rows

    def draw(self, f: dict, fig) -> None:
        ax = fig.subplots(1, 1)
        colors = {"clean": "k", "warn": "tab:red", "skip": "tab:orange", "rollback": "tab:green"}
        for name, v in f["variants"].items():
            if v.get("seed", f["seeds"][0]) == f["seeds"][0]:
                ax.plot(v["train"]["step"], v["train"]["loss"], lw=1, color=colors.get(v.get("arm"), None),
                        label=f"{name} (val {v['val_loss']:.3f})")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (nats)")
        ax.set_yscale("log")
        ax.legend()

    def verdict(self, f: dict) -> Verdict:
        arm = {a: [v for v in sorted(f["variants"].values(), key=lambda v: v["seed"]) if v["arm"] == a]
               for a in ("clean", *POLICIES)}
        loss = {a: [v["val_loss"] for v in vs] for a, vs in arm.items()}
        hurt = paired(loss["clean"], loss["warn"])  # what the unguarded spike cost
        recovered = paired(loss["rollback"], loss["warn"])  # what rollback won back
        left = paired(loss["clean"], loss["rollback"])
        spikes = sum(v["spikes"] for v in arm["warn"])
        why = (f"the spike cost the unguarded run (warn minus clean) {pm(hurt)}; rollback won back (warn minus "
               f"rollback) {pm(recovered)}, leaving {pm(left)} (skip minus clean "
               f"{pm(paired(loss['clean'], loss['skip']))}); spikes detected under warn: {spikes} over "
               f"{len(arm['warn'])} seeds (rule: held if the spike hurt and rollback won back, each {rule_text()}, "
               "and rollback closed at least half of the gap)")
        if not spikes:
            return Verdict(INCONCLUSIVE, why + "; the detector saw no spike")
        if sign(hurt) <= 0:
            return Verdict(INCONCLUSIVE if sign(hurt) == 0 else NOT_HELD,
                           why + "; the unguarded run recovered by itself, nothing to remedy")
        if sign(recovered) > 0 and left["mean"] <= hurt["mean"] / 2:
            return Verdict(HELD, why)
        if sign(recovered) < 0 or (sign(recovered) > 0 and left["mean"] > hurt["mean"] / 2):
            return Verdict(NOT_HELD, why + "; rollback did not recover")
        return Verdict(INCONCLUSIVE, why + "; within the noise")


def _events(events: list) -> str:
    """'spike x6 (steps 121-126), rollback x1 (step 121)'."""
    out = []
    for kind in dict.fromkeys(t for _, t in events):
        steps = [s for s, t in events if t == kind]
        where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
        out.append(f"{kind} x{len(steps)} ({where})")
    return ", ".join(out) or "-"


EXPERIMENT = Spike()
