"""``elmforge bench``'s figures from the raw samples: statistics, roofline, targets, reports.

Every rate is reported as its median over the repeats with the min, max and spread
((max - min) / median), because the machines it runs on are shared and noisy. Definitions:

- prompt tokens/s = batch x prompt / time to first token (the prompt's processing plus choosing
  one token);
- generation tokens/s = batch x (generate - 1) / time from the first to the last token;
- weight bytes per step: what one decode step reads (every weight once; one embedding row unless
  the embedding is also the output head), per generated token that over the batch;
- bandwidth = weight bytes per step x steps/s; roofline fraction = that over the roof the
  probe (:mod:`elmforge.bench.roofline`: the best of STREAM-style read, triad, copy and GEMV
  loops with the run's threads) measured in the same turns. A fraction above 1.0 means the probe
  missed the machine's ceiling: it is flagged as a probe problem, not printed as a figure.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

# Issue 19's targets (issue 13 had 0.8x for fp32 and int8): (name, dtype, ours, peer's engine label, minimum ratio, what is compared).
PEER_TARGETS = (
    ("fp32 decode >= 1.0x llama.cpp f32", "fp32", "llama.cpp f32", 1.0, "generation"),
    ("bf16 decode >= 1.0x llama.cpp f16", "bf16", "llama.cpp f16", 1.0, "generation"),
    ("int8 decode >= 1.0x llama.cpp q8_0", "int8", "llama.cpp q8_0", 1.0, "generation"),
    ("fp32 prefill >= 1.0x llama.cpp f32", "fp32", "llama.cpp f32", 1.0, "prompt"),
    ("bf16 prefill >= 1.0x llama.cpp f16", "bf16", "llama.cpp f16", 1.0, "prompt"),
)
BATCH_TARGET = 4.0  # 8-way batched decode >= 4x batch 1
UNIFORM_TARGET = 0.98  # OpenELM / uniform decode
METRIC_KEYS = {
    "prompt": "prompt_tokens_per_s",
    "generation": "generation_tokens_per_s",
}


def stats(values: list[float]) -> dict[str, float]:
    median = statistics.median(values)
    low, high = min(values), max(values)
    return {
        "median": median,
        "min": low,
        "max": high,
        "spread": (high - low) / median if median else 0.0,
        "n": len(values),
    }


def _environment(threads: int) -> dict[str, Any]:
    import torch

    from elmforge.environment import machine
    from elmforge.model import cpu_kernels

    return {
        "torch": torch.__version__,
        **machine(threads),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "elmforge_kernels": cpu_kernels.status(),
    }


def build_payload(
    config: dict[str, Any],
    model: dict[str, Any],
    infos: dict[tuple[str, str], dict],
    samples: list[dict],
    skipped: list[dict],
    profile: list[dict] | None = None,
) -> dict[str, Any]:
    prompt, generate = config["prompt"], config["generate"]
    roof_samples = [s for s in samples if s["label"] == "roofline"]
    roof_by_group: dict[tuple[str, int], list[float]] = {}
    for s in roof_samples:
        roof_by_group.setdefault((s["dtype"], s["batch"]), []).append(s["roof_gb_s"])
    all_roofs = [v for values in roof_by_group.values() for v in values]
    rows = []
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for s in samples:
        if s["label"] != "roofline":
            groups.setdefault((s["label"], s["dtype"], s["batch"]), []).append(s)
    for (label, dtype, batch), group in groups.items():
        info = infos[(label, dtype)]
        per_step = info["weight_bytes_per_step"]
        steps_per_s = [(generate - 1) / s["decode_s"] for s in group]
        bandwidth = stats([per_step * rate / 1e9 for rate in steps_per_s])
        roof = statistics.median(roof_by_group.get((dtype, batch), all_roofs))
        rows.append(
            {
                "engine": label,
                "dtype": dtype,
                "format": info["format"],
                "batch": batch,
                "prompt_tokens_per_s": stats([batch * prompt / s["ttft_s"] for s in group]),
                "generation_tokens_per_s": stats([batch * r for r in steps_per_s]),
                "time_to_first_token_s": stats([s["ttft_s"] for s in group]),
                "peak_memory_bytes": max(s["peak_memory_bytes"] for s in group),
                "weight_bytes_per_step": per_step,
                "weight_bytes_per_generated_token": per_step / batch,
                "bandwidth_gb_s": bandwidth,
                "roofline_gb_s": roof,
                "roofline_fraction": bandwidth["median"] / roof,
                "above_roofline": bandwidth["median"] > roof,
                "warmup_s": info.get("warmup_s"),
            }
        )
    rows.sort(key=lambda r: (config["dtypes"].index(r["dtype"]), r["batch"], r["engine"]))
    payload = {
        "environment": _environment(config["threads"]),
        "config": {k: v for k, v in config.items() if k != "skipped"},
        "model": model,
        "roofline": _roofline_summary(roof_samples, all_roofs, config["roofline_mib"]),
        "rows": rows,
        "skipped": skipped,
        "profile": profile,
    }
    payload["targets"] = targets(rows)
    return payload


def _roofline_summary(samples: list[dict], roofs: list[float], mib: int) -> dict[str, Any]:
    """The roof (best method per turn), each method's figures and the single-thread read."""
    methods: dict[str, list[float]] = {}
    for s in samples:
        for name, value in s["methods_gb_s"].items():
            methods.setdefault(name, []).append(value)
    single = [s["single_thread_read_gb_s"] for s in samples if s.get("single_thread_read_gb_s")]
    return {
        "method": f"best of STREAM-style read/triad/copy and float32 GEMV loops over {mib} MiB",
        "gb_s": stats(roofs) if roofs else None,
        "methods_gb_s": {name: stats(values) for name, values in methods.items()},
        "single_thread_read_gb_s": stats(single) if single else None,
    }


def _row(rows: list[dict], engine: str, dtype: str, batch: int) -> dict | None:
    return next(
        (r for r in rows if r["engine"] == engine and r["dtype"] == dtype and r["batch"] == batch),
        None,
    )


def _best_elmforge(rows: list[dict], dtype: str, batch: int, metric: str) -> dict | None:
    ours = [
        r for r in rows if r["engine"].startswith("elmforge ") and r["dtype"] == dtype
        and r["batch"] == batch
    ]  # fmt: skip
    return max(ours, key=lambda r: r[metric]["median"], default=None)


def targets(rows: list[dict]) -> list[dict[str, Any]]:
    """The issue's targets that this run can judge (ratios of medians, batch 1)."""
    found = []
    for name, dtype, peer_label, minimum, what in PEER_TARGETS:
        metric = METRIC_KEYS[what]
        ours, peer = _best_elmforge(rows, dtype, 1, metric), _row(rows, peer_label, dtype, 1)
        if ours is None or peer is None:
            missing = "elmforge" if ours is None else peer_label
            found.append({"target": name, "value": None, "met": None,
                          "detail": f"no {missing} row at {dtype}, batch 1"})  # fmt: skip
            continue
        value = ours[metric]["median"] / peer[metric]["median"]
        found.append(
            {
                "target": name,
                "value": value,
                "met": value >= minimum,
                "detail": f"{ours['engine']} {ours[metric]['median']:.1f} vs {peer_label} "
                f"{peer[metric]['median']:.1f} tokens/s",
            }
        )
    metric = METRIC_KEYS["generation"]
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        one, eight = _best_elmforge(rows, dtype, 1, metric), _best_elmforge(rows, dtype, 8, metric)
        if one is not None and eight is not None:
            value = eight[metric]["median"] / one[metric]["median"]
            found.append({"target": f"{dtype} 8-way batched decode >= 4x batch 1", "value": value,
                          "met": value >= BATCH_TARGET,
                          "detail": f"{eight['engine']}: {eight[metric]['median']:.1f} vs "
                                    f"{one[metric]['median']:.1f} tokens/s"})  # fmt: skip
        for row in rows:
            if (
                row["dtype"] != dtype
                or row["batch"] != 1
                or not row["engine"].startswith("uniform")
            ):
                continue
            path = row["engine"].split()[-1]
            ours = _row(rows, f"elmforge {path}", dtype, 1)
            if ours is not None:
                value = ours[metric]["median"] / row[metric]["median"]
                found.append({"target": f"{dtype} OpenELM/uniform decode >= 0.98 ({path})",
                              "value": value, "met": value >= UNIFORM_TARGET,
                              "detail": f"{ours[metric]['median']:.1f} vs "
                                        f"{row[metric]['median']:.1f} tokens/s"})  # fmt: skip
    return found


def _fmt(s: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return (
        f"{s['median'] * scale:.{digits}f} "
        f"({s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f})"
    )


def markdown(payload: dict[str, Any]) -> str:
    config, env = payload["config"], payload["environment"]
    lines = [
        f"# elmforge bench: {payload['model']['source']}",
        "",
        f"{payload['model']['parameters']:,} parameters; prompt {config['prompt']} tokens, "
        f"generate {config['generate']}; {env['threads']} threads on {env['cpu']} "
        f"({env['cpus']} CPUs), device {config['device']}; torch {env['torch']}; "
        f"elmforge kernels: {env['elmforge_kernels']}. Medians of {config['repeats']} "
        "interleaved repeats, (min-max) in brackets.",
        "",
        _roofline_line(payload["roofline"]),
        "",
        "| engine | dtype | batch | prompt tok/s | generation tok/s | TTFT ms | peak MB "
        "| weights/token MB | GB/s | of roof |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['engine']} | {r['dtype']} ({r['format']}) | {r['batch']} "
            f"| {_fmt(r['prompt_tokens_per_s'])} | {_fmt(r['generation_tokens_per_s'])} "
            f"| {_fmt(r['time_to_first_token_s'], 1e3, 0)} | {r['peak_memory_bytes'] / 2**20:.0f} "
            f"| {r['weight_bytes_per_generated_token'] / 1e6:.3g} | {_fmt(r['bandwidth_gb_s'])} "
            f"| {_of_roof(r)} |"
        )
    high = [r for r in payload["rows"] if r.get("above_roofline")]
    if high:
        lines += [
            "",
            "**Probe problem:** "
            + ", ".join(
                f"{r['engine']} {r['dtype']} batch {r['batch']} ({r['roofline_fraction']:.2f})"
                for r in high
            )
            + " read weights faster than the roofline probe: the probe missed this machine's "
            "ceiling (or the weights fit in a cache), so no fraction of roof is given for them.",
        ]
    lines += ["", "## Targets", ""]
    for t in payload["targets"]:
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "" if t["value"] is None else f" {t['value']:.2f}:"
        lines.append(f"- {t['target']}:{value} {verdict} ({t['detail']})")
    if payload.get("profile"):
        from elmforge.bench.profile import profile_markdown

        lines += profile_markdown(payload["profile"])
    if payload["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['engine']} at {s['dtype']}: {s['reason']}" for s in payload["skipped"]]
    return "\n".join(lines) + "\n"


def _of_roof(row: dict) -> str:
    return "probe problem" if row.get("above_roofline") else f"{row['roofline_fraction']:.2f}"


def _roofline_line(roofline: dict) -> str:
    roof = roofline["gb_s"]
    if not roof:
        return ""
    methods = ", ".join(
        f"{name} {value['median']:.1f}" for name, value in roofline["methods_gb_s"].items()
    )
    single = roofline.get("single_thread_read_gb_s")
    one = f"; one thread reads {single['median']:.1f} GB/s" if single else ""
    return f"Memory roofline (same run, best loop per turn): {_fmt(roof)} GB/s ({methods}){one}."


def bar_chart(payload: dict[str, Any], path: Path) -> None:
    """Generation and prompt tokens/s per engine at each batch size, min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(batches), 2, figsize=(13, 1.2 + 0.35 * len(rows)), squeeze=False)
    for i, batch in enumerate(batches):
        chosen = [r for r in rows if r["batch"] == batch]
        labels = [f"{r['engine']} [{r['dtype']}]" for r in chosen]
        for j, key in enumerate(("generation_tokens_per_s", "prompt_tokens_per_s")):
            ax = axes[i][j]
            medians = [r[key]["median"] for r in chosen]
            errors = [
                [m - r[key]["min"] for m, r in zip(medians, chosen)],
                [r[key]["max"] - m for m, r in zip(medians, chosen)],
            ]
            colors = ["tab:blue" if lab.startswith("elmforge") else "tab:gray" for lab in labels]
            ax.barh(range(len(chosen)), medians, xerr=errors, color=colors)
            ax.set_yticks(range(len(chosen)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{key.split('_')[0]} tokens/s, batch {batch}", fontsize=9)
    fig.suptitle(payload["model"]["source"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(payload: dict[str, Any], directory: Path) -> None:
    (directory / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    (directory / "bench.md").write_text(markdown(payload))
    if payload["rows"]:
        bar_chart(payload, directory / "bench.png")
