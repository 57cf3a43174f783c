"""`elmforge bench MODEL_OR_PRESET`: prompt and generation speed, side by side with peers."""

from __future__ import annotations

import argparse
from pathlib import Path

from elmforge.cli.arg_types import comma_list

EPILOG = """examples:
  elmforge bench OpenELM-270M --dtype fp32,bf16,int8 --batch 1,8 --against llama.cpp,mlx-lm
  elmforge bench runs/tiny/final --prompt 64 --generate 32 --threads 2 --out runs/bench/tiny
  elmforge bench OpenELM-270M --device cuda --dtype bf16 --batch 1,4,8
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="prompt/generation tokens/s, TTFT, memory and roofline, side by side with peers",
        description=(
            "Time prompt processing and token generation of a model directory or a preset "
            "(random weights) with elmforge's eager and compiled decoding and, where installed, "
            "llama.cpp, mlx-lm and the naive port on the same weights, interleaved in one run. "
            "Writes OUT/bench.json, OUT/bench.md and OUT/bench.png."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_PRESET", help="model directory or preset name")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence (128)")
    p.add_argument("--generate", type=int, default=64, help="tokens generated per sequence (64)")
    p.add_argument(
        "--batch", type=comma_list(int), default=(1,), help="batch sizes, e.g. 1,4,8 (1)"
    )
    p.add_argument(
        "--dtype", type=comma_list(str), default=("fp32",), help="fp32,bf16,fp16,int8,int4 (fp32)"
    )
    p.add_argument(
        "--paths", type=comma_list(str), default=("eager", "compiled"),
        help="elmforge decode paths: eager,compiled (both)",
    )  # fmt: skip
    p.add_argument(
        "--against", type=comma_list(str), default=(),
        help="peers on the same weights: llama.cpp,mlx-lm,naive,uniform (none)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads for every engine (all CPUs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per engine (5)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and prompts")
    p.add_argument(
        "--roofline-mib", type=int, default=1024,
        help="weights the bandwidth probe reads; keep it far above the CPU caches (1024)",
    )  # fmt: skip
    p.add_argument(
        "--profile", action="store_true",
        help="also split a prefill and a decode step of each elmforge engine: products (GB/s "
        "per weight shape, GFLOP/s against the measured peak), attention, elementwise, dispatch",
    )  # fmt: skip
    p.add_argument("--out", help="output directory (default: runs/bench/<model name>)")
    p.add_argument("--force", action="store_true", help="replace an earlier bench output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.bench.run import BenchConfig, run_bench

    out = Path(args.out) if args.out else Path("runs/bench") / Path(args.model.rstrip("/")).name
    config = BenchConfig(
        model=args.model,
        out=out,
        prompt=args.prompt,
        generate=args.generate,
        batches=args.batch,
        dtypes=args.dtype,
        paths=args.paths,
        against=args.against,
        threads=args.threads,
        device=args.device,
        repeats=args.repeats,
        seed=args.seed,
        roofline_mib=args.roofline_mib,
        profile=args.profile,
        force=args.force,
    )
    payload = run_bench(config)
    from elmforge.bench.report import markdown

    print()
    print(markdown(payload))
    print(f"wrote {out}/bench.json, bench.md, bench.png")
    return 0
