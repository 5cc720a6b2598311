"""mlm: the masked-token objective (BERT: 15% of positions, 80/10/10, bidirectional attention) against
next-token prediction, same model size, data and steps: the loss per predicted token, the tokens each learns
from per pass, and what each can do after (fill a blank, continue a text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextoken.data.loader import TokenData, eval_windows
from nextoken.lab.base import (
    HELD,
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
from nextoken.training.objective import IGNORE_INDEX, masked_tokens


class MaskedLM(Experiment):
    name = "mlm"
    claim = ("a masked-token model (BERT) learns from only the ~15% of tokens it masks, but sees both sides of a "
             "blank: it fills blanks better and continues text worse than a next-token model of the same size "
             "and compute")
    source = ("Devlin et al. 2019 (BERT) §3.1 and appendix C.1; Radford et al. 2018 (GPT) for next-token "
              "pretraining")
    cost = {"smoke": "about 8 s",
            "small": "1.1 min measured on a quiet 2-core CPU, 2026-12-06 "
                     "(6 runs of 400 steps)",
            "full": "6 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx), **{"train.max_steps": ctx.pick(30, 400, 3000)})
        vocab = TokenData(base.data.path, "train").manifest["vocab_size"]
        mlm = {"train.objective": "mlm", "model.attention": "bidirectional", "model.vocab_size": vocab + 1}
        return {seeded(arm, s): with_changes(base, **{**changes, "train.seed": s})
                for arm, changes in (("next-token", {}), ("mlm", mlm)) for s in seeds(ctx)}

    def measure(self, ctx: Context, runs) -> dict:
        cfg = next(iter(runs.values())).config
        val = TokenData(cfg.data.path, "val")
        windows = list(eval_windows(val, cfg.model.block_size, cfg.train.eval_tokens))
        x = torch.stack([w[0] for w in windows])
        T = x.size(1)
        mid = T // 2  # the blank: one position in the middle of each window, both sides visible to the MLM
        out = {}
        for name, run in runs.items():
            model = run.load().model
            with torch.no_grad():
                if run.config.train.objective == "next":
                    fill = model(x[:, :mid])[:, -1]  # the left side only
                    cont = model(x[:, :-1])[:, -1]
                    loss, predicted = final_eval(run)["loss"], T
                else:
                    mask_id = model.cfg.vocab_size - 1
                    g = torch.Generator().manual_seed(0)
                    inputs, targets = masked_tokens(x, model.cfg.vocab_size, run.config.train.mask_rate, generator=g)
                    loss = float(F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(),
                                                 ignore_index=IGNORE_INDEX))
                    predicted = float((targets != IGNORE_INDEX).sum()) / x.size(0)
                    blank, last = x.clone(), x.clone()
                    blank[:, mid] = mask_id
                    last[:, -1] = mask_id  # continue: predict the last token from what precedes it
                    fill, cont = model(blank)[:, mid], model(last)[:, -1]
            out[name] = {"arm": name.rsplit("-s", 1)[0], "seed": run.config.train.seed,
                         "steps": run.config.train.max_steps, "loss_per_predicted": loss,
                         "predicted_per_seq": predicted,
                         "targets_seen": predicted * run.config.train.max_steps * run.config.train.batch_size,
                         "fill_nll": float(F.cross_entropy(fill, x[:, mid])),
                         "fill_acc": float((fill.argmax(-1) == x[:, mid]).float().mean()),
                         "continue_nll": float(F.cross_entropy(cont, x[:, -1])),
                         "continue_acc": float((cont.argmax(-1) == x[:, -1]).float().mean()),
                         "train": curve(run, "train")}
        return {"variants": out, "block_size": T, "windows": len(windows), "seeds": seeds(ctx)}

    def setup(self, f: dict) -> str:
        return ("the same model size, data order, steps, batch and seeds, so the same compute; the MLM with "
                "train.objective mlm, model.attention bidirectional and one more id for [MASK]. On "
                f"{f['windows']} val windows of {f['block_size']} tokens: "
                "'fill' blanks the middle token (the MLM sees both sides, the next-token model its left side); "
                "'continue' predicts the last token from those before it (both see only the left). The MLM run's own "
                "eval lines score next-token loss, which means nothing for a bidirectional model; its loss here is "
                "the masked-token loss on the val windows.")

    def table(self, f: dict):
        rows = [[n, v["steps"], f"{v['predicted_per_seq']:.1f}", f"{v['targets_seen']:,.0f}", v["loss_per_predicted"],
                 v["fill_nll"], v["fill_acc"], v["continue_nll"], v["continue_acc"]] for n, v in f["variants"].items()]
        return ["model", "steps", "tokens predicted per sequence", "targets trained on", "val loss per predicted token",
                "fill NLL", "fill acc", "continue NLL", "continue acc"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for n, v in f["variants"].items():
            ax1.plot(v["train"]["step"], v["train"]["loss"], lw=1, color="tab:orange" if "mlm" in n else "tab:blue",
                     label=f"{n} (train loss per predicted token)")
        ax1.set_xlabel("step")
        ax1.set_ylabel("nats")
        ax1.legend()
        arms = ("next-token", "mlm")
        xs, w = range(2), 0.8 / len(arms)
        for i, arm in enumerate(arms):
            vs = _arm(f, arm)
            fill, cont = (sum(v[k] for v in vs) / len(vs) for k in ("fill_nll", "continue_nll"))
            ax2.bar([x + w * i for x in xs], [fill, cont], width=w, label=f"{arm} (mean of {len(vs)} seeds)")
        ax2.set_xticks([x + 0.4 - w / 2 for x in xs], ["fill a blank", "continue"])
        ax2.set_ylabel("NLL of the true token (nats)")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        nt, m = _arm(f, "next-token"), _arm(f, "mlm")
        fills = paired([v["fill_nll"] for v in m], [v["fill_nll"] for v in nt])  # > 0: the MLM fills better
        conts = paired([v["continue_nll"] for v in nt], [v["continue_nll"] for v in m])  # > 0: it continues worse
        s1, s2 = sign(fills), sign(conts)
        why = (f"at the same compute, fill-a-blank NLL next-token minus MLM {pm(fills)}; continue NLL MLM minus "
               f"next-token {pm(conts)}; the MLM predicted {m[0]['predicted_per_seq']:.1f} of {f['block_size']} "
               f"tokens per sequence (rule: held if the MLM fills better and continues worse, each {rule_text()})")
        outcome = held_if_all(s1, s2)
        return Verdict(outcome, why + ("" if outcome == HELD else f"; filling {_word(s1)}, continuing {_word(s2)}"))


def _arm(f: dict, arm: str) -> list[dict]:
    return sorted((v for v in f["variants"].values() if v.get("arm", arm) == arm), key=lambda v: v.get("seed", 0))


def _word(s: int) -> str:
    return {1: "held", -1: "went the other way", 0: "undecided"}[s]


EXPERIMENT = MaskedLM()
