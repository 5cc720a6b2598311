"""Where a run's numbers go: RUN/metrics.jsonl (the source of truth), TensorBoard and W&B when
asked for, and a rich progress display (or plain lines when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nextoken import nonfinite
from nextoken.config import Config
from nextoken.errors import ConfigError
from nextoken.eval.evaluate import perplexity
from nextoken.paths import shown


class MetricsLog:
    def __init__(self, run_dir: Path, cfg: Config, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        _end_cut_line(self.path)
        if cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--log.tensorboard needs tensorboard: pip install 'nextoken[tensorboard]'") from None
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if cfg.log.wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError("--log.wandb needs wandb: pip install 'nextoken[wandb]'") from None
            self.wandb = wandb.init(project=cfg.log.wandb_project, dir=str(run_dir), config=cfg.to_dict(),
                                    name=Path(run_dir).name, resume="allow")

    def write(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, **fields}
        with self.path.open("a") as fh:
            fh.write(nonfinite.dumps(row) + "\n")  # strict JSON: a non-finite figure as "Infinity", "NaN"
        step = fields.get("step", 0)  # the mirrors below take floats, non-finite ones as they are
        scalars = {f"{kind}/{k}": v for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if kind == "eval":
            where = f"{fields['split']}/{fields['source']}" if "source" in fields else fields["split"]
            scalars = {f"{where}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if kind == "task":  # task/NAME/acc, ...; a cloze task's acc_norm is null and left out
            scalars = {f"task/{fields['task']}/{k}": v for k, v in row.items()
                       if isinstance(v, (int, float)) and k not in ("step", "tokens", "n")}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            if kind == "event":
                self.tb.add_text("events", f"step {step}: {fields.get('type')} {fields.get('detail')}", step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _end_cut_line(path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline; end it, so that the next line
    written is whole (run.read_metrics skips the cut one)."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


class Display:
    """A rich progress bar (step, loss, perplexity, tokens/s, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, total: int, start: int, mode: str = "auto", enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and (mode == "on" or (mode == "auto" and sys.stderr.isatty()))
        self.total, self.t0, self.start = total, time.perf_counter(), start
        self.last_plain = 0.0
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  ppl {task.fields[ppl]:.1f}  {task.fields[tps]:,.0f} tok/s"
                           "{task.fields[mfu]}"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, loss=float("nan"),
                                               ppl=float("nan"), tps=0.0, mfu="")
            self.progress.start()

    def update(self, step: int, loss: float, tokens_per_s: float, mfu: float | None = None) -> None:
        if not self.enabled:
            return
        ppl = perplexity(loss)  # inf above the float range, not a made-up cap
        mfu_text = f"  MFU {mfu:.0%}" if mfu is not None else ""
        if self.live:
            self.progress.update(self.task, completed=step, loss=loss, ppl=ppl, tps=tokens_per_s, mfu=mfu_text)
            return
        now = time.perf_counter()
        if now - self.last_plain >= 10 or step == self.total:
            self.last_plain = now
            done = max(step - self.start, 1)
            eta = (now - self.t0) / done * (self.total - step)
            print(f"step {step}/{self.total}  loss {loss:.4f}  ppl {ppl:.1f}  {tokens_per_s:,.0f} tok/s{mfu_text}  "
                  f"eta {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        text = shown(text)  # a run directory's name may hold bytes that are not UTF-8
        if self.live:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            self.progress.stop()
