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
    cost = {"smoke": "about 8 s", "small": "about 5 min on a 2-core CPU (3 runs)", "full": "3 GPU runs"}

    def variants(self, ctx: Context):
        base = base_config(ctx, text_data(ctx))
        vocab = TokenData(base.data.path, "train").manifest["vocab_size"]
        mlm = with_changes(base, **{"train.objective": "mlm", "model.attention": "bidirectional",
                                    "model.vocab_size": vocab + 1})
        long = round(base.train.max_steps / mlm.train.mask_rate)  # as many predicted tokens as the next-token run
        return {"next-token": base, "mlm": mlm, "mlm-same-targets": with_changes(mlm, **{
            "train.max_steps": long, "train.eval_every": long // 4, "train.ckpt_every": long // 4})}

    def measure(self, ctx: Context, runs) -> dict:
        cfg = runs["next-token"].config
        val = TokenData(cfg.data.path, "val")
        windows = list(eval_windows(val, cfg.model.block_size, cfg.train.eval_tokens))
        x = torch.stack([w[0] for w in windows])
        T = x.size(1)
        mid = T // 2  # the blank: one position in the middle of each window, both sides visible to the MLM
        out = {}
        for name, run in runs.items():
            model = run.load().model
            with torch.no_grad():
                if name == "next-token":
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
            out[name] = {"steps": run.config.train.max_steps, "loss_per_predicted": loss,
                         "predicted_per_seq": predicted,
                         "targets_seen": predicted * run.config.train.max_steps * run.config.train.batch_size,
                         "fill_nll": float(F.cross_entropy(fill, x[:, mid])),
                         "fill_acc": float((fill.argmax(-1) == x[:, mid]).float().mean()),
                         "continue_nll": float(F.cross_entropy(cont, x[:, -1])),
                         "continue_acc": float((cont.argmax(-1) == x[:, -1]).float().mean()),
                         "train": curve(run, "train")}
        return {"variants": out, "block_size": T, "windows": len(windows)}

    def setup(self, f: dict) -> str:
        return (f"the same model size, data, steps and batch; the MLM with train.objective mlm, model.attention "
                "bidirectional and one more id for [MASK]; a third run trains the MLM 1/0.15 times as long, on as many "
                "predicted tokens as the next-token model (and that much more compute). "
                f"bidirectional and one more id for [MASK]. On {f['windows']} val windows of {f['block_size']} tokens: "
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
            ax1.plot(v["train"]["step"], v["train"]["loss"], lw=1, label=f"{n} (train loss per predicted token)")
        ax1.set_xlabel("step")
        ax1.set_ylabel("nats")
        ax1.legend()
        names = list(f["variants"])
        xs, w = range(2), 0.8 / len(names)
        for i, n in enumerate(names):
            v = f["variants"][n]
            ax2.bar([x + w * i for x in xs], [v["fill_nll"], v["continue_nll"]], width=w, label=n)
        ax2.set_xticks([x + 0.4 - w / 2 for x in xs], ["fill a blank", "continue"])
        ax2.set_ylabel("NLL of the true token (nats)")
        ax2.legend()

    def verdict(self, f: dict) -> Verdict:
        n, m = f["variants"]["next-token"], f["variants"]["mlm"]
        fills = n["fill_nll"] - m["fill_nll"]
        conts = m["continue_nll"] - n["continue_nll"]
        lg = f["variants"].get("mlm-same-targets")
        why = (f"at the same compute, fill-a-blank NLL: MLM {m['fill_nll']:.3f} vs next-token {n['fill_nll']:.3f}; "
               f"continue NLL: MLM {m['continue_nll']:.3f} vs next-token {n['continue_nll']:.3f}; the MLM predicted "
               f"{m['predicted_per_seq']:.1f} of {f['block_size']} tokens per sequence (rule: held if the MLM is "
               "better at filling and worse at continuing)"
               + (f"; trained on as many targets ({lg['steps']} steps) the MLM fills at {lg['fill_nll']:.3f} and "
                  f"continues at {lg['continue_nll']:.3f}" if lg else ""))
        if fills > 0 and conts > 0:
            return Verdict(HELD, why)
        if fills <= 0 and conts <= 0:
            return Verdict(NOT_HELD, why)
        return Verdict(INCONCLUSIVE, why + "; only one of the two held")


EXPERIMENT = MaskedLM()
