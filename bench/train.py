"""Training throughput: tokens/s and MFU of a full optimizer step, eager vs torch.compile.

For each model shape (OpenELM-tiny, OpenELM-270M by default) and precision (fp32, bf16 autocast)
it times the training step of ``elmforge.train`` (forward, cross-entropy + z-loss, backward,
gradient clipping, AdamW) on random tokens, eager and compiled, in one run, the two taking turns
step by step, so the compiled figures are compared against the eager baseline measured alongside. MFU uses the loop's own
FLOP count (6N + attention) and peak (``--peak-flops``, else the loop's default: a GPU datasheet
table, or on CPU the widest fp32 / bf16 unit /proc/cpuinfo lists x an assumed 2.5 GHz x threads).

    .venv/bin/python bench/train.py                      # CPU: tiny and 270M, fp32/bf16, eager/compile
    .venv/bin/python bench/train.py --shapes OpenELM-tiny --modes eager --steps 5
    .venv/bin/python bench/train.py --device cuda --batch 8 --seq-len 2048   # on a GPU

Prints a table and writes bench/results/train[-DEVICE].json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_json
from elmforge import OpenELMConfig, OpenELMForCausalLM
from elmforge.train.config import OptimSection, RunConfig
from elmforge.train.mfu import flops_per_token, peak_flops_per_device
from elmforge.train.optim import build_optimizer, loss_sums


def build_step(
    shape: str, precision: str, mode: str, device: torch.device, batch: int, seq_len: int
) -> tuple[OpenELMConfig, Callable[[], None]]:
    """A model of ``shape`` (seeded: every mode starts from the same weights) and one full
    optimizer step on fixed random tokens."""
    torch.manual_seed(0)
    config = OpenELMConfig.from_name(shape, max_context_length=max(seq_len, 256))
    model = OpenELMForCausalLM(config).to(device).train()
    optimizer = build_optimizer(model, OptimSection(), lr=1e-4)
    forward = torch.compile(model) if mode == "compile" else model
    params = list(model.parameters())
    input_ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    labels = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)

    def step() -> None:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = forward(input_ids=input_ids).logits
        ce_sum, z_sum = loss_sums(logits, labels)
        ((ce_sum + 1e-4 * z_sum) / labels.numel()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return config, step


def measure_modes(
    shape: str, precision: str, modes: list[str], device: torch.device, batch: int,
    seq_len: int, steps: int, warmup: int, run_config: RunConfig,
) -> list[dict]:  # fmt: skip
    """Median step time of each mode, the modes taking turns step by step, so a change in the
    machine's load hits eager and compiled alike."""
    built = {mode: build_step(shape, precision, mode, device, batch, seq_len) for mode in modes}
    warmup_s = {}
    for mode, (_, step) in built.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        warmup_s[mode] = time.perf_counter() - start
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(steps):
        for mode, (_, step) in built.items():
            start = time.perf_counter()
            step()
            samples[mode].append(time.perf_counter() - start)
    peak, peak_source = peak_flops_per_device(run_config, device, precision)
    rows = []
    for mode, (config, _) in built.items():
        seconds = statistics.median(samples[mode])
        tokens_per_s = batch * seq_len / seconds
        rows.append(
            {
                "shape": shape,
                "parameters": config.num_parameters_total(),
                "precision": precision,
                "mode": mode,
                "batch": batch,
                "seq_len": seq_len,
                "step_s": seconds,
                "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * flops_per_token(config, seq_len) / peak,
                "warmup_s": warmup_s[mode],
                "peak_flops": peak,
                "peak_source": peak_source,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["OpenELM-tiny", "OpenELM-270M"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch", type=int, default=None, help="default: 8 (tiny) / 1 (others) on CPU"
    )
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (compilation)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s per device")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/train.json)")
    args = parser.parse_args(argv)
    run_config = RunConfig()
    run_config.log.peak_flops = args.peak_flops
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for shape in args.shapes:
        batch = args.batch or (8 if shape == "OpenELM-tiny" or device.type == "cuda" else 1)
        for precision in args.precisions:
            measured = measure_modes(shape, precision, args.modes, device, batch, args.seq_len,
                                     args.steps, args.warmup, run_config)  # fmt: skip
            rows += measured
            for row in measured:
                print(f"{shape} {precision} {row['mode']}: {row['tokens_per_s']:,.0f} tokens/s, "
                      f"MFU {row['mfu']:.1%}", flush=True)  # fmt: skip
    for row in rows:  # speed-up of compile over the eager baseline of the same shape/precision
        base = next(r for r in rows if r["shape"] == row["shape"]
                    and r["precision"] == row["precision"] and r["mode"] == "eager")  # fmt: skip
        row["speedup_vs_eager"] = row["tokens_per_s"] / base["tokens_per_s"]
    print()
    print_table(rows, ["shape", "precision", "mode", "batch", "seq_len", "step_s", "tokens_per_s",
                       "mfu", "speedup_vs_eager", "warmup_s"])  # fmt: skip
    print(f"MFU peak: {rows[0]['peak_source']}" if rows else "")
    name = "train" if device.type == "cpu" else f"train-{device.type}"
    path = write_json(name, {"rows": rows, "args": vars(args)}, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
