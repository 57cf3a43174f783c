"""How a study should use the cores: N single-thread runs side by side, or one N-thread run.

Trains the default CPU study's model and data (elmforge/configs/study/lws-cpu.yaml: OpenELM-tiny, a
4096-token BPE tokenizer, 8 x 256-token steps) with ``elmforge pretrain``, in two layouts that
take turns in every repeat on the same machine:

- ``parallel``: as many single-thread runs at once as there are cores (``study.jobs: auto``);
- ``threaded``: one run using every core.

The figure is the aggregate training throughput (tokens/s summed over the runs at once, from
each run's metrics after its first logged interval), median over the repeats, and the ratio of
the layouts. Shared machines favour the parallel layout even more than quiet ones: threads that
wait for each other lose whenever another process holds a core.

    .venv/bin/python bench/study_parallel.py                # 3 repeats of 60 steps
    .venv/bin/python bench/study_parallel.py --steps 40 --repeats 2

Prints a table and writes bench/results/study_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table, write_json  # noqa: E402
from elmforge.study.config import DEFAULT_LWS_CONFIG  # noqa: E402
from elmforge.study.runner import usable_cpus  # noqa: E402

LOG_EVERY = 20


def _prepare(work: Path) -> Path:
    """The study's run config (its ``study:`` section dropped) with its BPE tokenizer, trained
    once for every run of the benchmark; returns the config's path."""
    from elmforge.data.tokenizer_choice import resolve_tokenizer
    from elmforge.study.config import LwsStudyConfig

    config = LwsStudyConfig.load(DEFAULT_LWS_CONFIG).run_config()
    _, spec = resolve_tokenizer(config.data, work / "tokenizer", report=lambda line: None)
    config.data.tokenizer = spec
    path = work / "run.yaml"
    path.write_text(config.to_yaml())
    return path


def _command(out: Path, config: Path, steps: int, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "elmforge.cli.main", "pretrain", "--config", str(config),
        "--out", str(out), "--schedule.max_steps", str(steps),
        "--schedule.warmup_steps", "10", "--train.num_threads", str(threads),
        "--log.log_every", str(LOG_EVERY), "--log.eval_batches", "0", "--log.plot", "false",
        "--checkpoint.save_every", str(steps), "--log.progress", "plain",
    ]  # fmt: skip


def _steady_rate(run_dir: Path) -> float:
    """Tokens/s of a run over its logged intervals after the first (start-up excluded)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if "tokens_per_s" in r][1:]
    if not rates:
        raise SystemExit(f"{run_dir}: too few steps to measure; raise --steps")
    return statistics.fmean(rates)


def measure(layout: str, cores: int, work: Path, config: Path, steps: int) -> dict:
    """Aggregate tokens/s of one layout: ``cores`` single-thread runs, or one ``cores``-thread run."""
    runs, threads = (cores, 1) if layout == "parallel" else (1, cores)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CI": "true"}
    out_dirs = [Path(tempfile.mkdtemp(prefix=f"{layout}-", dir=work)) / "run" for _ in range(runs)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(_command(out, config, steps, threads), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for out in out_dirs
    ]  # fmt: skip
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode:
            raise SystemExit(f"pretrain failed ({layout}): {stderr.strip().splitlines()[-1:]}")
    rates = [_steady_rate(out) for out in out_dirs]
    return {"layout": layout, "runs": runs, "threads": threads, "tokens_per_s": sum(rates),
            "per_run": rates, "wall_s": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per run (60)")
    parser.add_argument("--repeats", type=int, default=3, help="turns of both layouts (3)")
    parser.add_argument("--cores", type=int, default=usable_cpus(), help="cores to use (all)")
    parser.add_argument("--out", help="JSON path (bench/results/study_parallel.json)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="study-parallel-") as tmp:
        work = Path(tmp)
        config = _prepare(work)
        samples: dict[str, list[dict]] = {"parallel": [], "threaded": []}
        for _ in range(args.repeats):
            for layout in samples:
                samples[layout].append(measure(layout, args.cores, work, config, args.steps))
    rows = []
    for layout, results in samples.items():
        rows.append({
            "layout": layout,
            "runs x threads": f"{results[0]['runs']} x {results[0]['threads']}",
            "tokens/s (median)": statistics.median(r["tokens_per_s"] for r in results),
            "tokens/s per run": statistics.median(statistics.fmean(r["per_run"]) for r in results),
        })  # fmt: skip
    baseline = rows[1]["tokens/s (median)"]
    for row in rows:
        row["vs threaded"] = row["tokens/s (median)"] / baseline
    print_table(rows, ["layout", "runs x threads", "tokens/s (median)", "tokens/s per run",
                       "vs threaded"])  # fmt: skip
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    path = write_json(
        "study_parallel",
        {"steps": args.steps, "repeats": args.repeats, "cores": args.cores, "rows": rows,
         "samples": samples, "load_average": {"before": load_before, "after": load_after}},
        args.out,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
