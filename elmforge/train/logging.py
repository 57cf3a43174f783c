"""What a person watches during a run: metrics.jsonl, TensorBoard, loss.png, a progress display.

``metrics.jsonl`` holds one JSON object per logged step (``step, loss, z_loss, lr, grad_norm,
tokens, tokens_per_s, mfu, elapsed_s, eta_s, skipped_steps`` and, at validation steps,
``val_loss`` and ``val_ppl``); a fresh run first writes a ``step: 0`` line with the initial
model's ``val_loss`` (no training fields), the baseline the curve is read against. On resume, lines past the resumed step are dropped so the file always describes one
consistent run. The progress display is a tqdm bar in a terminal and plain lines in CI (``CI`` set)
or when stderr is not a TTY.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from elmforge.files import atomic_write, atomic_write_text
from elmforge.layout import RunDir
from elmforge.progress import interactive


def use_progress_bar(mode: str) -> bool:
    if mode == "bar":
        return True
    if mode in ("plain", "none"):
        return False
    return interactive()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            break
    return records


class RunLogger:
    """Rank 0's sinks; other ranks get one with every sink disabled (``enabled=False``)."""

    def __init__(
        self,
        run_dir: Path,
        start_step: int,
        max_steps: int,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        plot: bool = True,
        progress: str = "auto",
        trackers: Any = None,
    ) -> None:
        self.run_dir = RunDir(run_dir)
        self.enabled = enabled
        self.trackers = trackers  # elmforge.train.tracking.Trackers (wandb, mlflow), or None
        self.plot_enabled = plot and enabled
        self.records: list[dict[str, Any]] = []
        self.writer = None
        self.bar = None
        self.plain = progress != "none"
        if not enabled:
            return
        # A run killed before its first checkpoint starts again from step 0: drop all its lines.
        kept = read_metrics(self.run_dir.root) if start_step else []
        self.records = [r for r in kept if r.get("step", 0) <= start_step]
        # Rewrite the file with only the lines up to the resumed step (atomically).
        atomic_write_text(self.run_dir.metrics, "".join(json.dumps(r) + "\n" for r in self.records))
        self.metrics_file = open(self.run_dir.metrics, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote past the checkpoint we resume from
            # (all of them when no checkpoint was reached).
            self.writer = SummaryWriter(
                str(self.run_dir.tensorboard),
                purge_step=start_step + 1 if start_step else 0,
            )
        if use_progress_bar(progress):
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)
            self.plain = False

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self.records.append(record)
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(_tb_name(key), value, step)
            self.writer.flush()
        if self.trackers is not None:
            self.trackers.log(record)
        if self.bar is not None:
            # A value is None when every step since the last line was skipped (non-finite).
            postfix = {"loss": _fixed(record.get("loss"), ".4f")}
            if record.get("val_loss") is not None:
                postfix["val"] = f"{record['val_loss']:.4f}"
            postfix["lr"] = _fixed(record.get("lr"), ".2e")
            postfix["tok/s"] = _fixed(record.get("tokens_per_s"), ",.0f")
            self.bar.set_postfix(postfix, refresh=True)
        elif self.plain:
            print(format_plain(record), flush=True)
        if self.plot_enabled:
            plot_losses(self.records, self.run_dir.loss_plot)

    def close(self, final_model: Path | None = None) -> None:
        """Flush and close every sink; the trackers get ``final_model`` (the run's output)."""
        if not self.enabled:
            return
        if self.trackers is not None:
            self.trackers.finish(final_model)
        if self.plot_enabled and self.records:
            plot_losses(self.records, self.run_dir.loss_plot)
        self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def _fixed(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _tb_name(key: str) -> str:
    if key in ("loss", "z_loss", "val_loss", "val_ppl"):
        return f"loss/{key}"
    return f"train/{key}"


def format_plain(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}"]
    for key, fmt in (
        ("loss", "{:.4f}"),
        ("val_loss", "{:.4f}"),
        ("z_loss", "{:.3g}"),
        ("lr", "{:.3e}"),
        ("grad_norm", "{:.3f}"),
        ("tokens_per_s", "{:,.0f}"),
        ("mfu", "{:.2%}"),
        ("elapsed_s", "{:.0f}"),
        ("eta_s", "{:.0f}"),
    ):
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} " + fmt.format(value))
    if record.get("skipped_steps"):
        parts.append(f"skipped {record['skipped_steps']}")
    return " | ".join(parts)


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss (and validation loss) against step, written atomically as PNG; the other
    held-out figures (``val_*`` but the loss and perplexity: DPO's accuracy and margin,
    fine-tuning's lm-eval task scores) on a second axis at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = _series(records, "loss"), _series(records, "val_loss")
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    names = {k for r in records for k in r if k.startswith("val_")} - {"val_loss", "val_ppl"}
    scores = {key: _series(records, key) for key in sorted(names)}
    scores = {key: points for key, points in scores.items() if points}
    if scores:
        right = ax.twinx()
        for i, (key, points) in enumerate(scores.items()):  # colours after the two losses'
            right.plot(*zip(*points), "s--", color=f"C{i + 2}", label=key, linewidth=1.0,
                       markersize=3)  # fmt: skip
        right.set_ylabel("held-out scores")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize="small")
    ax.set_title(Path(path).parent.name)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
