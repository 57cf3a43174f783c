"""The studies' PNG plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARM_COLORS = {"lws": "tab:blue", "uniform": "tab:orange"}
ARM_LABELS = {"lws": "layer-wise scaling", "uniform": "uniform (matched)"}
SEED_STYLES = ("-", "--", ":", "-.")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from elmforge.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    _pyplot().close(fig)
    return path


def _focus(ax: Any, values: Sequence[float]) -> None:
    """Leave out the first steps' high losses so the differences that matter are visible."""
    values = sorted(v for v in values if v is not None)
    if len(values) < 4:
        return
    low, high = values[0], values[int(0.9 * (len(values) - 1))]
    pad = max(0.02, 0.05 * (high - low))
    ax.set_ylim(low - pad, high + pad)


def plot_loss_curves(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training and in-run validation loss against tokens, one line per run, coloured by arm.

    ``runs``: ``{"arm", "seed", "records"}`` with ``records`` a run's metrics.jsonl lines.
    """
    plt = _pyplot()
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
    seeds = sorted({run["seed"] for run in runs})
    train_values: list[float] = []
    val_values: list[float] = []
    for run in runs:
        color = ARM_COLORS.get(run["arm"], "tab:gray")
        style = SEED_STYLES[seeds.index(run["seed"]) % len(SEED_STYLES)]
        label = f"{run['arm']} seed {run['seed']}"
        train = [(r["tokens"] / 1e6, r["loss"]) for r in run["records"]
                 if isinstance(r.get("loss"), (int, float)) and "tokens" in r]  # fmt: skip
        val = [(r["tokens"] / 1e6, r["val_loss"]) for r in run["records"]
               if isinstance(r.get("val_loss"), (int, float)) and "tokens" in r]  # fmt: skip
        if train:
            ax_train.plot(*zip(*train), style, color=color, linewidth=1, alpha=0.8, label=label)
            train_values += [v for _, v in train[len(train) // 10 :]]
        if val:
            ax_val.plot(*zip(*val), style, color=color, marker="o", markersize=3, label=label)
            val_values += [v for t, v in val if t > 0]
    _focus(ax_train, train_values)
    _focus(ax_val, val_values)
    for ax, title in ((ax_train, "training loss"), (ax_val, "validation loss (in-run)")):
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_arm_losses(arms: dict[str, dict[str, Any]], title: str, path: Path) -> Path:
    """Each run's final validation loss (points) and each arm's mean with its 95% interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    points: list[dict[int, tuple[float, float]]] = []
    for x, (arm, entry) in enumerate(arms.items()):
        color = ARM_COLORS.get(arm, "tab:gray")
        values = [run["val_loss"] for run in entry["runs"]]
        offsets = [(i - (len(values) - 1) / 2) * 0.06 for i in range(len(values))]
        xs = [x + 0.18 + o for o in offsets]
        ax.scatter(xs, values, color=color, alpha=0.6, s=18, label=f"{arm}: each seed")
        points.append({run["seed"]: (px, v) for run, px, v in zip(entry["runs"], xs, values)})
        mean, ci = entry["val_loss_mean"], entry["val_loss_ci95"]
        if ci is not None:
            ax.errorbar([x], [mean], yerr=[[mean - ci[0]], [ci[1] - mean]], fmt="o",
                        color=color, capsize=6, markersize=7, label=f"{arm}: mean, 95% CI")  # fmt: skip
        else:
            ax.plot([x], [mean], "o", color=color, markersize=7, label=f"{arm}: one seed")
    for seed in set(points[0]).intersection(*points[1:]):  # the arms of a seed, paired
        ax.plot(*zip(*(arm_points[seed] for arm_points in points)), color="gray", alpha=0.35,
                linewidth=0.8, zorder=0)  # fmt: skip
    ax.set_xticks(range(len(arms)), [ARM_LABELS.get(a, a) for a in arms])
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_arm_profiles(configs: dict[str, Any], path: Path) -> Path:
    """Per-layer parameters, query heads and FFN width of each arm's model."""
    from elmforge.model.profile import layer_rows

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / max(1, len(configs))
    for i, (arm, config) in enumerate(configs.items()):
        rows = layer_rows(config)
        layers = [r.layer for r in rows]
        color = ARM_COLORS.get(arm, "tab:gray")
        label = f"{arm} ({config.num_parameters_total() / 1e6:.3f}M)"
        axes[0].bar([x + (i - (len(configs) - 1) / 2) * width for x in layers],
                    [r.parameters / 1e3 for r in rows], width, color=color, label=label)  # fmt: skip
        axes[1].plot(layers, [r.query_heads for r in rows], "o-", color=color, label=arm)
        axes[2].plot(layers, [r.ffn_dim for r in rows], "s-", color=color, label=arm)
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel in zip(axes, ("parameters (thousands)", "query heads", "FFN width")):
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("per-layer allocation: layer-wise scaling against the matched uniform model")
    fig.tight_layout()
    return _save(fig, path)


def _errorbars(
    ax: Any, xs: Sequence[float], entries: Sequence[dict[str, Any]], **style: Any
) -> None:
    ys = [e["val_loss"] for e in entries]
    low = [e["val_loss"] - e["val_loss_ci95"][0] if e.get("val_loss_ci95") else 0 for e in entries]
    high = [e["val_loss_ci95"][1] - e["val_loss"] if e.get("val_loss_ci95") else 0 for e in entries]
    ax.errorbar(xs, ys, yerr=[low, high], capsize=4, **style)


def plot_averaging(entries: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Validation loss (95% interval over documents) and zero-shot accuracy of each model."""
    plt = _pyplot()
    with_accuracy = any(e.get("zero_shot") for e in entries)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(11 if with_accuracy else 7, 4))
    axes = list(axes) if with_accuracy else [axes]
    xs = list(range(len(entries)))
    colors = ["tab:gray" if e["kind"] == "checkpoint" else
              ("tab:green" if e["kind"] == "average" else "tab:red") for e in entries]  # fmt: skip
    for x, entry, color in zip(xs, entries, colors):
        _errorbars(axes[0], [x], [entry], fmt="o", color=color)
    axes[0].set_ylabel("validation loss (nats/token)")
    if with_accuracy:
        accuracy = [(x, e["zero_shot"]["mean"]) for x, e in zip(xs, entries) if e.get("zero_shot")]
        axes[1].bar([x for x, _ in accuracy], [a * 100 for _, a in accuracy],
                    color=[colors[x] for x, _ in accuracy])  # fmt: skip
        axes[1].set_ylabel("zero-shot accuracy, mean over tasks (%)")
    for ax in axes:
        ax.set_xticks(xs, [e["label"] for e in entries], rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_tokens(
    checkpoints: Sequence[dict[str, Any]], in_run: Sequence[tuple[int, float]], title: str,
    path: Path,
) -> Path:  # fmt: skip
    """Validation loss and zero-shot accuracy against tokens seen."""
    plt = _pyplot()
    with_accuracy = any(c.get("zero_shot") for c in checkpoints)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(11 if with_accuracy else 7, 4))
    axes = list(axes) if with_accuracy else [axes]
    if in_run:
        axes[0].plot([t / 1e6 for t, _ in in_run], [v for _, v in in_run], "-", color="tab:gray",
                     alpha=0.7, label="in-run validation (run's own batches)")  # fmt: skip
    xs = [c["tokens"] / 1e6 for c in checkpoints]
    _errorbars(axes[0], xs, checkpoints, fmt="o-", color="tab:blue",
               label="checkpoints, held-out documents (95% CI)")  # fmt: skip
    _focus(axes[0], [c["val_loss"] for c in checkpoints] + [v for t, v in in_run if t > 0])
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].legend(fontsize=8)
    if with_accuracy:
        tasks = sorted(
            {t for c in checkpoints if c.get("zero_shot") for t in c["zero_shot"]["tasks"]}
        )
        for task in tasks:
            points = [(c["tokens"] / 1e6, c["zero_shot"]["tasks"][task]["value"] * 100)
                      for c in checkpoints if task in (c.get("zero_shot") or {}).get("tasks", {})]  # fmt: skip
            axes[1].plot(*zip(*points), "o-", linewidth=1, markersize=3, alpha=0.7, label=task)
        means = [(c["tokens"] / 1e6, c["zero_shot"]["mean"] * 100) for c in checkpoints
                 if c.get("zero_shot") and c["zero_shot"]["mean"] is not None]  # fmt: skip
        if means:
            axes[1].plot(*zip(*means), "k-", linewidth=2.5, label="mean")
        axes[1].set_ylabel("zero-shot accuracy (%)")
        axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.set_xlabel("tokens seen (millions)")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
