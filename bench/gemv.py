"""Which matrix-vector product reads OpenELM-270M's weights fastest: PyTorch's or elmforge's.

    .venv/bin/python bench/gemv.py [--threads 2] [--rows 1,8] [--repeats 9]

A decode step multiplies one row per sequence by every weight matrix of the model, so its cost
is the weights' bytes over the memory bandwidth. This runs exactly those products (the 65 linear
layers of OpenELM-270M, output head included, ~1.1 GB in float32: far more than any cache) with
each candidate kernel, the candidates taking turns in every repeat, and reports the median time
per pass and the bandwidth it implies (weight bytes / time), and the same from the sum of each
matrix's fastest time (robust on a shared, busy machine). The best float32 figure is the
machine's roof for the others. Writes ``bench/results/gemv.json``; the table is in
docs/inference.md and decides which kernel ``OpenELMLinear`` / ``QuantizedLinear`` use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json

from elmforge import OpenELMConfig, OpenELMForCausalLM
from elmforge.model import cpu_kernels, quant


def model_matrices(name: str) -> list[torch.Tensor]:
    """The float32 weight of every linear layer of the preset (random values)."""
    model = OpenELMForCausalLM(OpenELMConfig.from_name(name))
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def candidates(weights: list[torch.Tensor], rows: int) -> dict[str, tuple]:
    """name -> (per-matrix operands, function(x, operands), weight bytes)."""
    out: dict[str, tuple] = {}

    def add(name, operands, fn, nbytes):
        out[name] = (operands, fn, nbytes)

    fp32 = weights
    bf16 = [w.bfloat16() for w in weights]
    int8 = [quant.quantize_int8(w) for w in weights]
    int4 = [quant.quantize_int4(w) for w in weights]
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    add("fp32 F.linear (MKL)", fp32, lambda x, w: F.linear(x, w), size(fp32))
    add("fp32 elmforge", fp32, cpu_kernels.linear_decode, size(fp32))
    add("bf16 F.linear (oneDNN)", bf16, lambda x, w: F.linear(x.bfloat16(), w), size(bf16))
    if rows == 1:
        add("bf16 torch.mv", bf16, lambda x, w: torch.mv(w, x.bfloat16()[0]), size(bf16))
    add("bf16 elmforge", bf16, lambda x, w: cpu_kernels.linear_decode(x.bfloat16(), w), size(bf16))
    int8_bytes = sum(q.numel() + 4 * s.numel() for q, s in int8)
    add(
        "int8 torch._weight_int8pack_mm (bf16 x)",
        [(q, s.bfloat16()) for q, s in int8],
        lambda x, p: torch._weight_int8pack_mm(x.bfloat16(), p[0], p[1]),
        int8_bytes,
    )
    add(
        "int8 dequantise + F.linear",
        int8,
        lambda x, p: F.linear(x, quant.dequantize_int8(*p)),
        int8_bytes,
    )
    add("int8 elmforge", int8, lambda x, p: cpu_kernels.linear_int8(x, *p), int8_bytes)
    int4_bytes = sum(q.numel() + 4 * s.numel() for q, s in int4)
    add(
        "int4 dequantise + F.linear",
        int4,
        lambda x, p: F.linear(x, quant.dequantize_int4(*p, quant.INT4_GROUP_SIZE)),
        int4_bytes,
    )
    add(
        "int4 elmforge",
        int4,
        lambda x, p: cpu_kernels.linear_int4(x, *p, quant.INT4_GROUP_SIZE),
        int4_bytes,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,8", help="rows per product (batch), comma-separated")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--name", default="OpenELM-270M")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not cpu_kernels.load_kernels():
        sys.exit(f"elmforge's kernels are not available: {cpu_kernels.status()}")
    weights = model_matrices(args.name)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
        table = candidates(weights, rows)
        # Per pass and per matrix: a pass streams all weights (out of cache); on a shared
        # machine the sum of each matrix's fastest time over the passes is the uncontended
        # figure (every matrix is 1-40 ms of work, one time slice), the pass median the typical.
        passes: dict[str, list[float]] = {name: [] for name in table}
        best: dict[str, list[float]] = {name: [float("inf")] * len(weights) for name in table}
        with torch.inference_mode():
            for repeat in range(args.repeats + 1):  # the first pass is a warm-up
                for name, (operands, fn, _) in table.items():
                    total = 0.0
                    for i, (w, op) in enumerate(zip(weights, operands)):
                        start = time.perf_counter()
                        fn(inputs[w.shape[1]], op)
                        spent = time.perf_counter() - start
                        total += spent
                        if repeat:
                            best[name][i] = min(best[name][i], spent)
                    if repeat:
                        passes[name].append(total)
        for name, (_, _, nbytes) in table.items():
            median = statistics.median(passes[name])
            fastest = sum(best[name])
            results.append(
                {
                    "rows": rows,
                    "kernel": name,
                    "weights_gb": nbytes / 1e9,
                    "ms": median * 1e3,
                    "ms_min": min(passes[name]) * 1e3,
                    "ms_max": max(passes[name]) * 1e3,
                    "gb_s": nbytes / median / 1e9,
                    "ms_best_per_matrix": fastest * 1e3,
                    "gb_s_best": nbytes / fastest / 1e9,
                }
            )
        print(f"  measured {rows} row(s)", flush=True)
    for rows in {r["rows"] for r in results}:
        fp32 = [r for r in results if r["rows"] == rows and r["kernel"][:4] == "fp32"]
        roof, roof_best = max(r["gb_s"] for r in fp32), max(r["gb_s_best"] for r in fp32)
        for r in results:
            if r["rows"] == rows:
                r["of_roof"] = r["gb_s"] / roof
                r["of_roof_best"] = r["gb_s_best"] / roof_best
    print()
    print_table(results, ["rows", "kernel", "weights_gb", "ms", "ms_min", "ms_max", "gb_s",
                          "of_roof", "ms_best_per_matrix", "gb_s_best", "of_roof_best"])  # fmt: skip
    path = write_json("gemv", {"args": vars(args), "rows": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
