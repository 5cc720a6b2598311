"""lm-evaluation-harness on a nextoken run: an `lm_eval` model class (registered as "nextoken") that scores with
eval/tasks.py, so that a harness task and `--task` on the same items give the same numbers (docs/eval.md).

It keeps nextoken's conventions where `lm_eval --model hf` on an exported directory would not: every context
starts with the run's end-of-text token (as training put one before every document; HF's default adds none),
and the window is the run's block_size. Needs `pip install 'nextoken[eval]'`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nextoken.errors import NextokenError
from nextoken.eval.tasks import encode_pair, loglikelihoods

try:
    import lm_eval.models  # noqa: F401  (lm-eval fills its registry with its own models only while it is empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    raise NextokenError("--harness needs lm-evaluation-harness: pip install 'nextoken[eval]'") from None


@register_model("nextoken")
class NextokenLM(LM):
    """A loaded nextoken checkpoint (run.Loaded) behind lm-eval's three request types."""

    def __init__(self, loaded, batch_size: int = 32, max_gen_toks: int = 256):
        super().__init__()
        from nextoken.data.tokenizer import eot_id

        self.loaded, self.model, self.tok = loaded, loaded.model, loaded.tokenizer
        self.block_size = self.model.cfg.block_size
        self.eot = eot_id(self.tok)
        self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
        self._device = next(self.model.parameters()).device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> NextokenLM:
        """`--model_args run=RUN[,step=N,device=cpu]`, for lm-eval's own entry points once this module is imported."""
        from nextoken.run import Run

        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        step = int(args["step"]) if "step" in args else None
        return cls(Run(args["run"]).load(step, args.get("device", "cpu")),
                   int((additional_config or {}).get("batch_size") or 32))

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        return loglikelihoods(self.model, pairs, self.block_size, self.batch_size, self.device)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([encode_pair(self.tok, ctx, cont, self.eot) for ctx, cont in (r.args for r in requests)])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's summed log-likelihood after an end-of-text token, in disjoint windows of block_size tokens
        (lm-eval's get_rolling_token_windows with context_len 1, as HFLM)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for i, (text,) in enumerate(r.args for r in requests):
            ids = self.tok.encode(text, add_special_tokens=False).ids
            for w in get_rolling_token_windows(ids, self.eot, self.block_size, 1):
                pairs.append(make_disjoint_window(w))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._score(pairs), strict=True):
            totals[i] += ll
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations (temperature 0 unless the task asks to sample), cut at the first stop string."""
        from nextoken.generate import generate

        out = []
        for ctx, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = [self.eot, *self.tok.encode(ctx, add_special_tokens=False).ids]
            ids = ids[-max(1, self.block_size - n_new):]  # room for what is generated (the window does not slide)
            n_new = min(n_new, self.block_size - len(ids))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            new, text = [], ""
            for t in generate(self.model, ids, max(1, n_new), temperature=temperature, seed=0):
                if t == self.eot:
                    break
                new.append(t)
                text = self.tok.decode(new, skip_special_tokens=False)
                if any(s in text for s in until):
                    break
            for s in until:
                text = text.split(s)[0]
            out.append(text)
        return out


def run_harness(loaded, tasks: list[str], include_path: str | Path | None = None, limit: int | None = None,
                batch_size: int = 32) -> dict:
    """lm-eval's simple_evaluate with NextokenLM; its results dictionary with "step" and "checkpoint" added."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise NextokenError(f"--include-path {include_path} is not a folder of task YAMLs")
    manager = None
    if include_path:  # your own tasks alone first: indexing lm-eval's thousands of YAMLs takes a while
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise NextokenError(f"lm-eval knows no task {', '.join(unknown)}; see `lm_eval ls tasks`, or pass "
                            "--include-path DIR for your own YAMLs")
    res = lm_eval.simple_evaluate(model=NextokenLM(loaded, batch_size), tasks=tasks, limit=limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=0)
    res = {k: v for k, v in res.items() if k in ("results", "n-samples", "configs", "versions", "higher_is_better")}
    return {**res, "step": loaded.step, "checkpoint": str(loaded.checkpoint)}
