"""mixture: the same compute at several mixes of two domains (code and English), and each domain's val loss
against its share of the mix: the trade-off that choosing a data mix is about."""

from __future__ import annotations

import math

from nextoken.lab.base import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Context,
    Experiment,
    Verdict,
    base_config,
    prepared,
    text_data,
    with_changes,
)
from nextoken.run import Run, last_per_step


class Mixture(Experiment):
    name = "mixture"
    claim = ("at the same compute, each domain's val loss falls as its share of the training mix rises, so a mix "
             "trades one domain's loss for the other's")
    source = "Ye et al. 2024, Data Mixing Laws (eq. 1); Xie et al. 2023 (DoReMi); nanochat's data-mix ablations"
    cost = {"smoke": "about 10 s", "small": "7 min on the shared 2-core CPU (6 runs)", "full": "6 GPU runs"}

    def domains(self, ctx: Context) -> tuple[str, str, str]:
        """(code, prose, the run's data.path): generated corpora at smoke, else the built-in stdlib and
        stdlib-prose (byte-level, as the other text experiments)."""
        if ctx.smoke:
            from nextoken.data.synthetic import english_like, python_like

            code, prose = prepared(ctx.out / "code", python_like), prepared(ctx.out / "prose", english_like)
            return str(code), str(prose), str(code)
        return "stdlib", "stdlib-prose", str(text_data(ctx))

    def shares(self, ctx: Context) -> list[float]:
        return ctx.pick([0.2, 0.5, 0.8], [0.1, 0.3, 0.5, 0.7, 0.9], [0.1, 0.3, 0.5, 0.7, 0.9])

    def variants(self, ctx: Context):
        code, prose, path = self.domains(ctx)
        base = base_config(ctx, path, **{"data.tokenizer": "bytes"})
        out = {}
        for p in self.shares(ctx):
            out[f"prose-{p:g}"] = with_changes(base, **{"data.mix": f"{code}={1 - p:g},{prose}={p:g}"})
        out["prose-0.5-seed2"] = with_changes(out["prose-0.5"], **{"train.seed": base.train.seed + 1})
        return out

    def measure(self, ctx: Context, runs: dict[str, Run]) -> dict:
        from nextoken.data.mixture import parse_mix

        out = {}
        for name, run in runs.items():
            cfg = run.config
            sources = parse_mix(cfg.data.mix)
            last = run.last_per_step("train")[-1]
            losses = {s.name: last_per_step(run.metrics("eval"), "eval", s.name)[-1]["loss"] for s in sources}
            out[name] = {"shares": {s.name: s.weight for s in sources}, "val_loss": losses,
                         "tokens_by_source": last.get("tokens_by_source", {}), "tokens": last["tokens"],
                         "seed": cfg.train.seed}
        domains = list(out["prose-0.5"]["shares"])
        scatter = max(abs(out["prose-0.5"]["val_loss"][d] - out["prose-0.5-seed2"]["val_loss"][d]) for d in domains)
        return {"variants": out, "domains": domains, "scatter": scatter,
                "slopes": {d: _slope(out, d) for d in domains}}

    def setup(self, f: dict) -> str:
        v = next(iter(f["variants"].values()))
        return (f"the same model and steps ({v['tokens']:,} training tokens) on mixes of {f['domains'][0]} and "
                f"{f['domains'][1]} (`--data A=W,B=W`), the second's share "
                + ", ".join(f"{x['shares'][f['domains'][1]]:g}" for n, x in f["variants"].items() if "seed" not in n)
                + "; each domain's val loss on the same windows in every run (a per-source eval line), and the "
                "middle mix trained again with another seed for the scatter.")

    def table(self, f: dict):
        d0, d1 = f["domains"]
        rows = [[n, f"{v['shares'][d1]:g}", f"{v['tokens_by_source'].get(d1, 0) / max(v['tokens'], 1):.3f}",
                 v["val_loss"][d0], v["val_loss"][d1]] for n, v in f["variants"].items()]
        return ["run", f"{d1} share", f"{d1} tokens trained (share)", f"{d0} val loss", f"{d1} val loss"], rows

    def draw(self, f: dict, fig) -> None:
        ax = fig.subplots(1, 1)
        for i, d in enumerate(f["domains"]):
            pts = sorted((v["shares"][d], v["val_loss"][d]) for n, v in f["variants"].items() if "seed" not in n)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=d)
        ax.set_xlabel("the domain's share of the training mix")
        ax.set_ylabel("the domain's val loss (nats/token)")
        ax.legend()

    def verdict(self, f: dict) -> Verdict:
        s, bad, flat = f["scatter"], [], []
        parts = []
        for d in f["domains"]:
            pts = sorted((v["shares"][d], v["val_loss"][d]) for n, v in f["variants"].items() if "seed" not in n)
            gain = pts[0][1] - pts[-1][1]  # what the domain gained from its lowest share to its highest
            rises = max(b[1] - a[1] for a, b in zip(pts, pts[1:], strict=False))  # the worst step up
            parts.append(f"{d} {pts[0][1]:.4f} at share {pts[0][0]:g} -> {pts[-1][1]:.4f} at {pts[-1][0]:g} "
                         f"({f['slopes'][d]:+.4f} nats per e-fold of share)")
            if gain < -s:
                bad.append(d)
            elif gain <= s or rises > s:
                flat.append(d)
        why = ("; ".join(parts) + f"; seed scatter {s:.4f} (rule: held if each domain's loss falls from its lowest to "
               "its highest share by more than the scatter and never rises by more than it on the way)")
        if bad:
            return Verdict(NOT_HELD, why + f"; {', '.join(bad)} got worse with a larger share")
        if flat:
            return Verdict(INCONCLUSIVE, why + f"; {', '.join(flat)} within the scatter")
        return Verdict(HELD, why)


def _slope(variants: dict, domain: str) -> float:
    """Least-squares slope of a domain's val loss against the log of its share (nats per e-fold)."""
    pts = [(math.log(v["shares"][domain]), v["val_loss"][domain]) for n, v in variants.items() if "seed" not in n]
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else 0.0


EXPERIMENT = Mixture()
