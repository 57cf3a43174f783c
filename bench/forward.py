"""Prefill and decode throughput of OpenELM-270M: elmforge vs a naive eager port vs uniform.

    .venv/bin/python bench/forward.py [--threads 2] [--prompt 128] [--decode 64] [--dtypes fp32,bf16]

Three models with random weights, measured in the same run (ratios, not absolute times, are the
result; the machines are shared and noisy):
- ``elmforge``: ``OpenELMForCausalLM`` (fused RMSNorm, SDPA GQA without repeated keys/values,
  RoPE tables built once, last-position logits only while generating);
- ``naive``: the same weights in ``bench/naive_openelm.py``, the algorithm of Apple's hub code;
- ``uniform``: an elmforge model with uniform allocation (every layer the same) and about the
  same parameter count: the paper's comparison, asking whether layer-wise scaling costs speed.
Prefill: one forward over a ``--prompt``-token prompt, tokens/s. Decode: ``--decode`` greedy
steps with the KV cache after an untimed prefill, tokens/s. The three models take turns in every
repeat and the median is reported. Writes ``bench/results/forward.json``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json
from naive_openelm import NaiveOpenELM

from elmforge import OpenELMConfig, OpenELMForCausalLM
from elmforge.model.config import PRESETS
from elmforge.model.modeling import CACHE_FIELD

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def uniform_twin(config: OpenELMConfig) -> OpenELMConfig:
    """A uniform-allocation config with the same depth and width and the closest parameter count."""
    target = config.num_parameters_total()
    shape = {
        k: v
        for k, v in PRESETS["OpenELM-270M"].items()
        if k not in ("qkv_multipliers", "ffn_multipliers")
    }
    best = None
    for qkv, ffn in itertools.product([0.5, 0.75, 1.0], [x / 100 for x in range(100, 400, 5)]):
        candidate = OpenELMConfig(**shape, qkv_multipliers=qkv, ffn_multipliers=ffn)
        gap = abs(candidate.num_parameters_total() - target)
        if best is None or gap < best[0]:
            best = (gap, candidate)
    return best[1]


@torch.no_grad()
def prefill_elmforge(model, prompt):
    return model(prompt, use_cache=True, logits_to_keep=1)


@torch.no_grad()
def decode_elmforge(model, prompt, steps) -> float:
    """Seconds of ``steps`` greedy decode steps after a prefill of ``prompt`` (not timed)."""
    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache, token = getattr(out, CACHE_FIELD), out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - start


@torch.no_grad()
def prefill_naive(model, prompt):
    return model(prompt, model.new_cache())


@torch.no_grad()
def decode_naive(model, prompt, steps) -> float:
    cache = model.new_cache()
    token = model(prompt, cache)[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        token = model(token, cache)[:, -1:].argmax(-1)
    return time.perf_counter() - start


def measure_interleaved(candidates, prompt, steps, repeats) -> list[dict]:
    """Median prefill and decode rates of each model, the models taking turns in every repeat,
    so a change in the machine's load during the run hits all of them alike."""
    prefill_s = {name: [] for name, *_ in candidates}
    decode_s = {name: [] for name, *_ in candidates}
    for _, model, prefill, decode in candidates:  # warm-up: allocator, kernel choice
        prefill(model, prompt)
        decode(model, prompt, 2)
    for _ in range(repeats):
        for name, model, prefill, decode in candidates:
            start = time.perf_counter()
            prefill(model, prompt)
            prefill_s[name].append(time.perf_counter() - start)
            decode_s[name].append(decode(model, prompt, steps))
    return [
        {
            "model": name,
            "prefill_tok_s": prompt.shape[1] / statistics.median(prefill_s[name]),
            "decode_tok_s": steps / statistics.median(decode_s[name]),
        }
        for name, *_ in candidates
    ]


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
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = OpenELMConfig.from_name(args.name)
    uniform_config = uniform_twin(config)
    print(
        f"{args.name}: {config.num_parameters_total():,} parameters; uniform twin: "
        f"{uniform_config.num_parameters_total():,} (qkv {uniform_config.qkv_multipliers}, "
        f"ffn {uniform_config.ffn_multipliers[0]}); {args.threads} threads"
    )
    elmforge_model = OpenELMForCausalLM(config).eval()
    naive = NaiveOpenELM(config).eval()
    naive.load_state_dict(elmforge_model.state_dict(), strict=False)
    uniform = OpenELMForCausalLM(uniform_config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt))

    with torch.no_grad():  # the baseline computes the same function
        ours = elmforge_model(prompt).logits
        theirs = naive(prompt)
        rel = ((ours - theirs).abs().max() / ours.abs().max()).item()
    print(f"naive vs elmforge logits, relative difference: {rel:.2e}")
    assert rel < 1e-4

    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        candidates = [
            ("elmforge", elmforge_model, prefill_elmforge, decode_elmforge),
            ("naive", naive, prefill_naive, decode_naive),
            ("uniform", uniform, prefill_elmforge, decode_elmforge),
        ]
        for _, model, *_ in candidates:
            model.to(dtype)
        for row in measure_interleaved(candidates, prompt, args.decode, args.repeats):
            rows.append({"dtype": dtype_name, **row})
        for _, model, *_ in candidates:
            model.to(torch.float32)
        print(f"  measured {dtype_name}", flush=True)
    by = {(r["dtype"], r["model"]): r for r in rows}
    for row in rows:
        base = by[(row["dtype"], "naive")]
        uni = by[(row["dtype"], "uniform")]
        row["prefill_vs_naive"] = row["prefill_tok_s"] / base["prefill_tok_s"]
        row["decode_vs_naive"] = row["decode_tok_s"] / base["decode_tok_s"]
        row["prefill_vs_uniform"] = row["prefill_tok_s"] / uni["prefill_tok_s"]
        row["decode_vs_uniform"] = row["decode_tok_s"] / uni["decode_tok_s"]
    print()
    print_table(
        rows,
        ["dtype", "model", "prefill_tok_s", "decode_tok_s", "prefill_vs_naive", "decode_vs_naive",
         "prefill_vs_uniform", "decode_vs_uniform"],
    )  # fmt: skip
    path = write_json(
        "forward",
        {
            "args": vars(args),
            "parameters": {
                "openelm": config.num_parameters_total(),
                "uniform": uniform_config.num_parameters_total(),
            },
            "rows": rows,
        },
        args.out,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
