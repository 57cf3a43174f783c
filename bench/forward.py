"""Prompt and decode throughput of OpenELM-270M: elmforge vs the naive port vs uniform allocation.

    .venv/bin/python bench/forward.py [--threads 2] [--prompt 128] [--decode 64] [--dtypes fp32,bf16]

A thin caller of ``elmforge bench`` (``elmforge.bench.run``) for the paper's Section 4 question:
random OpenELM-270M weights run by elmforge (eager ``generate``), by the naive port of Apple's hub
algorithm on the same weights, and by a uniform-allocation model of about the same size (does
layer-wise scaling cost speed?), interleaved, medians of ``--repeats``. Writes
``bench/results/forward/bench.{json,md,png}``; the full comparison with llama.cpp and mlx-lm is
``elmforge bench OpenELM-270M --against llama.cpp,mlx-lm,naive,uniform``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from elmforge.bench.report import markdown
from elmforge.bench.run import BenchConfig, run_bench

RESULTS = Path(__file__).resolve().parent / "results" / "forward"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="OpenELM-270M")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    payload = run_bench(
        BenchConfig(
            model=args.name,
            out=args.out,
            prompt=args.prompt,
            generate=args.decode,
            dtypes=tuple(args.dtypes.split(",")),
            paths=("eager",),
            against=("naive", "uniform"),
            threads=args.threads,
            repeats=args.repeats,
            force=True,
        )
    )
    print()
    print(markdown(payload))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
