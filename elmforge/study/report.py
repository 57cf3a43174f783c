"""The layer-wise scaling study's report: ``report.json``, ``report.md`` and its PNG plots.

``report.json`` holds ``arms.lws`` and ``arms.uniform``, each with ``parameters``, ``config``
(the model section), ``runs`` (one per seed: ``seed``, ``run_dir``, ``val_loss``, ``val_ppl``,
``tokens``, ...), ``val_loss_mean`` and ``val_loss_ci95``; ``difference`` (LWS minus uniform:
Welch's interval, and the paired-by-seed one), ``seeds``, ``conclusion`` (Welch),
``paired_conclusion`` and ``notes``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from elmforge.files import atomic_write_json, atomic_write_text
from elmforge.progress import Report, say
from elmforge.study.evaluation import public
from elmforge.study.stats import Difference, paired_difference, summarize, welch_difference

ARMS = ("lws", "uniform")
PLOTS = {"loss_curves": "loss_curves.png", "val_loss": "val_loss.png", "profile": "profile.png"}
ONE_SEED_NOTE = (
    "one seed per arm: a single run has no spread to measure, so there is no interval and no "
    "ranking; run with --seeds 2 or more (3 is the default)"
)


def _last(records: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def conclusion(
    difference: Difference, seeds: int, quantity: str = "validation loss", paired: bool = False
) -> str:
    """What the difference LWS minus uniform says, with its uncertainty, in one sentence: Welch's
    test of the two arms' means, or (``paired``) the test of the per-seed differences."""
    d = difference.difference
    if difference.ci95 is None:
        return (
            f"LWS minus uniform {quantity}: {d:+.4f} from one run per arm; with no interval "
            "this is a single observation, not a ranking."
        )
    low, high = difference.ci95
    test = "paired t" if paired else "Welch t"
    stats = f"95% CI [{low:+.4f}, {high:+.4f}]"
    if difference.t is not None:
        stats += f", {test} = {difference.t:.2f}, df = {difference.df:.1f}"
        stats += f", p = {difference.p_value:.3g}"
    stats += f", {seeds} {'pairs' if paired else 'seeds per arm'}"
    if paired:
        # Both arms of a seed read the same batches in the same order: the seed's share of the
        # spread cancels in the per-seed difference (Welch's test of the two means keeps it).
        prefix = "Paired by seed (the arms of a seed share their data order): "
        if high < 0 or low > 0:
            lower = "layer-wise scaling" if high < 0 else "the matched uniform model"
            return f"{prefix}{lower} is lower, LWS minus uniform {quantity} {d:+.4f} ({stats})."
        return (
            f"{prefix}not resolved, LWS minus uniform {quantity} {d:+.4f} ({stats}); the "
            "interval includes 0."
        )
    if high < 0:
        return (
            f"Layer-wise scaling reached a lower {quantity} than the matched uniform model: "
            f"{d:+.4f} ({stats})."
        )
    if low > 0:
        return (
            f"The matched uniform model reached a lower {quantity} than layer-wise scaling: "
            f"LWS minus uniform {d:+.4f} ({stats})."
        )
    return (
        f"No difference resolved: LWS minus uniform {quantity} {d:+.4f} ({stats}); the interval "
        "includes 0, so Welch's test of the two means cannot tell the allocations apart at this "
        "budget."
    )


def _arm_entry(
    out_dir: Path, plan: dict[str, Any], arm: str, evaluations: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from elmforge.train.logging import read_metrics

    runs, curves = [], []
    for run in (r for r in plan["runs"] if r["arm"] == arm):
        run_dir = out_dir / run["run_dir"]
        records = read_metrics(run_dir)
        scores = public(evaluations[run["name"]])
        runs.append({
            "seed": run["seed"],
            "run_dir": str(run_dir),
            "val_loss": scores["val_loss"],
            "val_ppl": scores["val_ppl"],
            "tokens": _last(records, "tokens"),
            "val_loss_ci95_documents": scores["val_loss_ci95"],
            "bits_per_byte": scores["bits_per_byte"],
            "eval_tokens": scores["eval_tokens"],
            "eval_documents": scores["eval_documents"],
            "in_run_val_loss": _last(records, "val_loss"),
            "train_seconds": _last(records, "elapsed_s"),
            **({"zero_shot": scores["zero_shot"]} if "zero_shot" in scores else {}),
        })  # fmt: skip
        curves.append({"arm": arm, "seed": run["seed"], "records": records})
    summary = summarize([r["val_loss"] for r in runs])
    entry: dict[str, Any] = {
        "parameters": plan["arms"][arm]["parameters"],
        "config": plan["arms"][arm]["model"],
        "runs": runs,
        "val_loss_mean": summary.mean,
        "val_loss_ci95": list(summary.ci95) if summary.ci95 else None,
        "val_loss_std": summary.std,
    }
    accuracy = [
        r["zero_shot"]["mean"] for r in runs if r.get("zero_shot", {}).get("mean") is not None
    ]
    if accuracy:
        acc = summarize(accuracy)
        entry["zero_shot_mean"] = acc.mean
        entry["zero_shot_ci95"] = list(acc.ci95) if acc.ci95 else None
    return entry, curves


def model_config(entry: dict[str, Any]) -> Any:
    from elmforge.model.config import OpenELMConfig

    model = entry["config"]
    return OpenELMConfig.from_name(
        model["name"], **{**model["shape"], "vocab_size": model["vocab_size"]}
    )


def build_lws_report(
    out_dir: Path, plan: dict[str, Any], evaluations: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    arms, curves = {}, []
    for arm in ARMS:
        arms[arm], arm_curves = _arm_entry(out_dir, plan, arm, evaluations)
        curves += arm_curves
    lws = [r["val_loss"] for r in arms["lws"]["runs"]]
    uniform = [r["val_loss"] for r in arms["uniform"]["runs"]]
    welch = welch_difference(lws, uniform)
    paired = paired_difference(lws, uniform)
    seeds = min(len(lws), len(uniform))
    report: dict[str, Any] = {
        "study": "lws",
        "seeds": seeds,
        "arms": arms,
        "difference": {"lws_minus_uniform": welch.to_dict(), "paired_by_seed": paired.to_dict()},
        "conclusion": conclusion(welch, seeds),
        "paired_conclusion": conclusion(paired, seeds, paired=True),
        "notes": [ONE_SEED_NOTE] if seeds < 2 else [],
        "match": plan["match"],
        "evaluation": plan["evaluation"],
        "plots": dict(PLOTS),
    }
    if all("zero_shot_mean" in arms[a] for a in ARMS):
        accuracy = [[r["zero_shot"]["mean"] for r in arms[a]["runs"]] for a in ARMS]
        accuracy_difference = welch_difference(*accuracy)
        report["difference"]["zero_shot_lws_minus_uniform"] = accuracy_difference.to_dict()
        report["zero_shot_conclusion"] = conclusion(
            accuracy_difference, seeds, "zero-shot accuracy (higher is better)"
        )
    return report, curves


def _short_title(report: dict[str, Any]) -> str:
    welch, paired = (report["difference"][k] for k in ("lws_minus_uniform", "paired_by_seed"))
    if not welch["ci95"]:
        return f"LWS minus uniform: {welch['difference']:+.4f} nats (one seed: no interval)"
    intervals = [f"{label} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                 for label, d in (("Welch", welch), ("paired", paired)) if d["ci95"]]  # fmt: skip
    return (
        f"LWS minus uniform: {welch['difference']:+.4f} nats, {report['seeds']} seeds/arm\n"
        f"95% CI {', '.join(intervals)} (lines join the arms of a seed)"
    )


def _interval(ci: list[float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "n/a (one seed)"


def render_lws_markdown(report: dict[str, Any], command: str | None = None) -> str:
    arms = report["arms"]
    lines = ["# Layer-wise scaling against a matched uniform model", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"**{report['conclusion']}**", "", report["paired_conclusion"], ""]
    if report.get("zero_shot_conclusion"):
        lines += [report["zero_shot_conclusion"], ""]
    lines += [f"- note: {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    lines += [
        "| arm | parameters | query heads per layer | FFN width per layer | seeds | val loss, mean | 95% CI | val ppl of the mean |",
        "|---|---:|---|---|---:|---:|---|---:|",
    ]
    import math

    for arm in ARMS:
        entry = arms[arm]
        config = model_config(entry)
        lines.append(
            f"| {arm} | {entry['parameters']:,} | {', '.join(map(str, config.num_query_heads))} | "
            f"{', '.join(map(str, config.ffn_dims()))} | {len(entry['runs'])} | "
            f"{entry['val_loss_mean']:.4f} | {_interval(entry['val_loss_ci95'])} | "
            f"{math.exp(entry['val_loss_mean']):.2f} |"
        )
    difference = report["difference"]
    lines += [
        "",
        "| LWS minus uniform, val loss | difference | 95% CI | t | df | p |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, key in (
        ("Welch (independent arms)", "lws_minus_uniform"),
        ("paired by seed", "paired_by_seed"),
    ):
        d = difference[key]
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        lines.append(
            f"| {label} | {d['difference']:+.4f} | {_interval(d['ci95'])} | {fmt(d['t'], '.2f')} "
            f"| {fmt(d['df'], '.1f')} | {fmt(d['p_value'], '.3g')} |"
        )
    lines += [
        "",
        "| arm | seed | tokens | val loss | val ppl | bits/byte | in-run val loss | train time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        for run in arms[arm]["runs"]:
            in_run = run["in_run_val_loss"]
            seconds = run["train_seconds"]
            lines.append(
                f"| {arm} | {run['seed']} | {run['tokens'] or 0:,} | {run['val_loss']:.4f} | "
                f"{run['val_ppl']:.2f} | {run['bits_per_byte']:.4f} | "
                f"{'n/a' if in_run is None else format(in_run, '.4f')} | "
                f"{'n/a' if seconds is None else format(seconds, '.0f')} |"
            )
    evaluation = report["evaluation"]
    lines += [
        "",
        f"Validation loss: {evaluation['documents']} held-out documents of the run's sources "
        f"(validation split), scored in windows of {evaluation['context_length']} tokens "
        f"advancing by {evaluation['stride']}; the same documents for every run. Arms matched "
        f"within {report['match']['tolerance']:.1%} of parameters (gap "
        f"{report['match']['relative_gap']:+.3%}).",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "![final validation loss per arm](val_loss.png)",
        "",
        "![per-layer profile](profile.png)",
        "",
    ]
    return "\n".join(lines)


def write_lws_report(
    out_dir: Path,
    plan: dict[str, Any],
    evaluations: dict[str, dict[str, Any]],
    report: Report = say,
    command: str | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md and the three plots into ``out_dir``; return the report."""
    from elmforge.study.plots import plot_arm_losses, plot_arm_profiles, plot_loss_curves

    result, curves = build_lws_report(out_dir, plan, evaluations)
    if command:
        result["command"] = command
    plot_loss_curves(curves, out_dir / PLOTS["loss_curves"])
    plot_arm_losses(result["arms"], _short_title(result), out_dir / PLOTS["val_loss"])
    plot_arm_profiles({arm: model_config(result["arms"][arm]) for arm in ARMS},
                      out_dir / PLOTS["profile"])  # fmt: skip
    atomic_write_json(out_dir / "report.json", result)
    atomic_write_text(out_dir / "report.md", render_lws_markdown(result, command))
    for note in result["notes"]:
        print(f"elmforge study lws: note: {note}", file=sys.stderr, flush=True)
    report(f"[study] {result['conclusion']}")
    report(f"[study] {result['paired_conclusion']}")
    report(f"[study] report: {out_dir / 'report.md'}")
    return result
