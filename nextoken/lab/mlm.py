"""mlm: the masked-token objective (BERT: 15% of positions, 80/10/10, bidirectional attention) against
next-token prediction, same model size, data and steps: the loss per predicted token, the tokens each learns
from per pass, and what each can do after (fill a blank, continue a text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextoken.data.loader import TokenData, eval_windows
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
from nextoken.training.objective import IGNORE_INDEX, masked_tokens


class MaskedLM(Experiment):
    name = "mlm"
    claim = ("a masked-token model (BERT) learns from only the ~15% of tokens it masks, but sees both sides of a "
             "blank: it fills blanks better and continues text worse than a next-token model of the same size "
             "and compute")
    source = "Devlin et al. 2019 §3.1; the seed lesson §12.3 ('comprehension models play a masked variant')"
    cost = {"smoke": "about 4 s", "small": "about 3 min on a 2-core CPU (2 runs)", "full": "2 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx))
        vocab = TokenData(base.data.path, "train").manifest["vocab_size"]
        return {"next-token": base, "mlm": with_changes(base, **{
            "train.objective": "mlm", "model.attention": "bidirectional", "model.vocab_size": vocab + 1})}

    def measure(self, ctx: Context, runs) -> dict:
        cfg = runs["next-token"].config
        val = TokenData(cfg.data.path, "val")
        windows = list(eval_windows(val, cfg.model.block_size, cfg.train.eval_tokens))
        x = torch.stack([w[0] for w in windows])
        nxt, mlm = runs["next-token"].load().model, runs["mlm"].load().model
        mask_id = mlm.cfg.vocab_size - 1
        g = torch.Generator().manual_seed(0)
        inputs, targets = masked_tokens(x, mlm.cfg.vocab_size, runs["mlm"].config.train.mask_rate, generator=g)
        T = x.size(1)
        mid = T // 2  # the blank: one position in the middle of each window, both sides visible to the MLM
        with torch.no_grad():
            mlm_loss = F.cross_entropy(mlm(inputs).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            blank = x.clone()
            blank[:, mid] = mask_id
            fill = {"mlm": mlm(blank)[:, mid], "next-token": nxt(x[:, :mid])[:, -1]}  # the left side only
            last = x.clone()
            last[:, -1] = mask_id  # continue: predict the last token from what precedes it
            cont = {"mlm": mlm(last)[:, -1], "next-token": nxt(x[:, :-1])[:, -1]}
        out = {}
        for name in ("next-token", "mlm"):
            out[name] = {
                "fill_nll": float(F.cross_entropy(fill[name], x[:, mid])),
                "fill_acc": float((fill[name].argmax(-1) == x[:, mid]).float().mean()),
                "continue_nll": float(F.cross_entropy(cont[name], x[:, -1])),
                "continue_acc": float((cont[name].argmax(-1) == x[:, -1]).float().mean()),
                "train": curve(runs[name], "train")}
        out["next-token"]["loss_per_predicted"] = final_eval(runs["next-token"])["loss"]
        out["mlm"]["loss_per_predicted"] = float(mlm_loss)
        out["next-token"]["predicted_per_seq"] = T
        out["mlm"]["predicted_per_seq"] = float((targets != IGNORE_INDEX).sum()) / x.size(0)
        return {"variants": out, "block_size": T, "windows": len(windows)}

    def setup(self, f: dict) -> str:
        return (f"the same model size, data, steps and batch; the MLM with train.objective mlm, model.attention "
                f"bidirectional and one more id for [MASK]. On {f['windows']} val windows of {f['block_size']} tokens: "
                "'fill' blanks the middle token (the MLM sees both sides, the next-token model its left side); "
                "'continue' predicts the last token from those before it (both see only the left). The MLM run's own "
                "eval lines score next-token loss, which means nothing for a bidirectional model; its loss here is "
                "the masked-token loss on the val windows.")

    def table(self, f: dict):
        rows = [[n, v["loss_per_predicted"], f"{v['predicted_per_seq']:.1f}", v["fill_nll"], v["fill_acc"],
                 v["continue_nll"], v["continue_acc"]] for n, v in f["variants"].items()]
        return ["model", "val loss per predicted token", "tokens predicted per sequence", "fill NLL", "fill acc",
                "continue NLL", "continue acc"], rows

    def draw(self, f: dict, fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for n, v in f["variants"].items():
            ax1.plot(v["train"]["step"], v["train"]["loss"], lw=1, label=f"{n} (train loss per predicted token)")
        ax1.set_xlabel("step")
        ax1.set_ylabel("nats")
        ax1.legend()
        names = list(f["variants"])
        xs = range(2)
        for i, n in enumerate(names):
            v = f["variants"][n]
            ax2.bar([x + 0.4 * i for x in xs], [v["fill_nll"], v["continue_nll"]], width=0.4, label=n)
        ax2.set_xticks([x + 0.2 for x in xs], ["fill a blank", "continue"])
        ax2.set_ylabel("NLL of the true token (nats)")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        n, m = f["variants"]["next-token"], f["variants"]["mlm"]
        fills = n["fill_nll"] - m["fill_nll"]
        conts = m["continue_nll"] - n["continue_nll"]
        why = (f"fill-a-blank NLL: MLM {m['fill_nll']:.3f} vs next-token {n['fill_nll']:.3f}; continue NLL: MLM "
               f"{m['continue_nll']:.3f} vs next-token {n['continue_nll']:.3f}; the MLM predicted "
               f"{m['predicted_per_seq']:.1f} of {f['block_size']} tokens per sequence (rule: held if the MLM is "
               "better at filling and worse at continuing)")
        if fills > 0 and conts > 0:
            return Verdict(HELD, why)
        if fills <= 0 and conts <= 0:
            return Verdict(NOT_HELD, why)
        return Verdict(INCONCLUSIVE, why + "; only one of the two held")


EXPERIMENT = MaskedLM()
