"""Fine-tuning cost: tokens/s and peak memory of full fine-tuning vs LoRA vs DoRA, and DPO vs SFT.

OpenELM-270M shape (random weights, LLaMA-2's 32000-token vocabulary), sequences of 256 tokens.
Each case runs in its own process (peak RSS is a per-process high-water mark) and times the
optimizer step the training engine takes for a fine-tuning task (``elmforge.finetune.tasks`` on
``elmforge.train.engine.Engine.gradients``: forward, loss, backward, clipping; then AdamW) after one untimed warm-up step; the adapters are CoreNet's recipe
(rank 32, alpha 32, dropout 0.1 on the embedding and the four projections). An SFT step takes
``--rows`` sequences, a DPO step as many pairs (twice the policy tokens, plus the reference's
forward pass). Memory: the process's peak RSS, and the same minus the RSS after the imports (the
interpreter, torch and transformers, the same in every case). Cases take turns within each of
``--rounds`` rounds (medians).

    .venv/bin/python bench/finetune.py                  # CPU, all cases, 1 round of 3 steps
    .venv/bin/python bench/finetune.py --threads 1 --steps 2   # a shared 2-core machine
    .venv/bin/python bench/finetune.py --rounds 2 --steps 5
    .venv/bin/python bench/finetune.py --device cuda --seq-len 1024

Prints a table and writes bench/results/finetune[-DEVICE].json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# objective, peft, precision, activation checkpointing ("ckpt") or not ("-"), and optionally
# "pad"/"pack": --rows examples of mixed lengths (up to --seq-len) right-padded into one
# micro-batch, or packed into rows of --seq-len tokens (tokens/s counts real tokens only).
CASES = [
    ("sft", "none", "fp32", "-"),
    ("sft", "none", "fp32", "ckpt"),
    ("sft", "lora", "fp32", "-"),
    ("sft", "lora", "fp32", "ckpt"),
    ("sft", "dora", "fp32", "-"),
    ("sft", "dora", "fp32", "ckpt"),
    ("sft", "lora", "bf16", "-"),
    ("dpo", "lora", "fp32", "-"),
]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(
    objective: str,
    peft: str,
    precision: str,
    checkpointing: str,
    args: argparse.Namespace,
    layout: str = "-",
) -> dict:
    """In this process: build the model, time ``args.steps`` optimizer steps, measure memory."""
    import torch

    from elmforge.finetune import adapters
    from elmforge.finetune.config import FinetuneConfig
    from elmforge.finetune.tasks import DPOTask, SFTTask, make_batch, make_packed_batch
    from elmforge.finetune.tokenize import TokenRow
    from elmforge.model.config import OpenELMConfig
    from elmforge.model.modeling import OpenELMForCausalLM
    from elmforge.train.distributed import DistEnv
    from elmforge.train.engine import Engine, enable_activation_checkpointing
    from elmforge.train.optim import WarmupCosineSchedule

    imports_rss = _rss_mib()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_name(args.shape)).to(device)
    if checkpointing == "ckpt":
        enable_activation_checkpointing(model, reentrant=False)
    config = FinetuneConfig.load(None, [f"peft={peft}", f"train.precision={precision}"])
    reference = None
    if peft != "none":
        spec = adapters.lora_config(peft, config.lora.r, config.lora.alpha, config.lora.dropout,
                                    config.lora.targets)  # fmt: skip
        model = adapters.add_adapter(model, spec)
    elif objective == "dpo":
        import copy

        reference = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    common = dict(write_final=None, describe=None)
    if objective == "sft":
        task = SFTTask(model, env, precision, peft != "none", **common)
    else:
        task = DPOTask(model, env, precision, peft != "none", beta=0.1, loss="sigmoid",
                       reference=reference, **common)  # fmt: skip
    schedule = WarmupCosineSchedule(config.optim.lr, 0.0, 0, 1000, 0.0)
    engine = Engine(config, Path("."), env, task, None, schedule, 1, "")

    def step(batch: dict) -> int:
        _, _, tokens = engine.gradients([batch])
        engine.optimizer.step()
        engine.optimizer.zero_grad(set_to_none=True)
        return tokens

    vocab, prompt = model.config.vocab_size, args.seq_len // 4

    def row(seed: int) -> TokenRow:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, vocab, (args.seq_len + 1,), generator=generator).tolist()
        return TokenRow(ids, [False] * prompt + [True] * (args.seq_len + 1 - prompt))

    if layout in ("pad", "pack"):
        generator = torch.Generator().manual_seed(5)
        mixed = []
        for i in range(args.rows):
            length = int(
                torch.randint(args.seq_len // 8, args.seq_len + 1, (1,), generator=generator)
            )
            mixed.append(TokenRow(row(i).ids[:length], row(i).trained[:length]))
        if layout == "pad":
            batch = make_batch(mixed, 0)
        else:  # greedy packing in order, as the loader does
            packed, used = [[]], 0
            for example in mixed:
                if packed[-1] and used + len(example.ids) - 1 > args.seq_len:
                    packed.append([])
                    used = 0
                packed[-1].append(example)
                used += len(example.ids) - 1
            batch = make_packed_batch(packed, 0)
    elif objective == "sft":
        batch = make_batch([row(i) for i in range(args.rows)], 0)
    else:
        batch = make_batch([(row(2 * i), row(2 * i + 1)) for i in range(args.rows)], 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    step(batch)  # warm-up (allocates AdamW's state)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        tokens = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    trainable = sum(p.numel() for p in adapters.trainable_parameters(model).values())
    result = {
        "objective": objective, "peft": peft, "precision": precision,
        "checkpointing": checkpointing, "layout": layout,
        "trainable_params": trainable, "step_s": step_s, "tokens_per_s": tokens / step_s,
        "imports_rss_mib": imports_rss, "setup_rss_mib": rss_before, "peak_rss_mib": _rss_mib(),
    }  # fmt: skip
    result["training_mib"] = result["peak_rss_mib"] - imports_rss
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="OpenELM-270M")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (3)")
    parser.add_argument("--rows", type=int, default=1, help="sequences (DPO: pairs) per step (1)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all cases (1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--cases", help="comma-separated objective/peft/precision/ckpt|-, e.g. sft/lora/fp32/ckpt"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON path (default bench/results/finetune[-DEVICE].json)")
    args = parser.parse_args()
    if args.child:
        objective, peft, precision, checkpointing, *layout = args.child.split("/")
        print(json.dumps(run_case(objective, peft, precision, checkpointing, args, *layout)))
        return
    cases = [tuple(c.split("/")) for c in args.cases.split(",")] if args.cases else CASES
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for round_index in range(args.rounds):
        for case in cases:
            command = [sys.executable, __file__, "--child", "/".join(case), "--shape", args.shape,
                       "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                       "--rows", str(args.rows),
                       "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[case].append(json.loads(output.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1}: {'/'.join(case)} done", file=sys.stderr)
    rows = []
    for results in runs.values():
        row = dict(results[0])
        for key in ("step_s", "tokens_per_s", "peak_rss_mib", "setup_rss_mib", "training_mib"):
            row[key] = statistics.median(r[key] for r in results)
        rows.append(row)
    full = {
        r["precision"]: r
        for r in rows
        if r["peft"] == "none" and r["objective"] == "sft" and r["checkpointing"] == "-"
    }
    sft_lora = {
        r["precision"]: r
        for r in rows
        if r["peft"] == "lora" and r["objective"] == "sft" and r["checkpointing"] == "-"
    }
    plain = {(r["objective"], r["peft"], r["precision"]): r for r in rows
             if r["checkpointing"] == "-" and r["layout"] == "-"}  # fmt: skip
    padded = {(r["peft"], r["checkpointing"]): r for r in rows if r["layout"] == "pad"}
    for row in rows:
        if row["layout"] == "pack" and (row["peft"], row["checkpointing"]) in padded:
            twin = padded[(row["peft"], row["checkpointing"])]
            row["speed_vs_padded"] = row["tokens_per_s"] / twin["tokens_per_s"]
        if row["layout"] != "-":
            continue
        twin = plain.get((row["objective"], row["peft"], row["precision"]))
        if row["checkpointing"] == "ckpt" and twin:
            row["training_vs_no_ckpt"] = row["training_mib"] / twin["training_mib"]
            row["speed_vs_no_ckpt"] = row["tokens_per_s"] / twin["tokens_per_s"]
        baseline = full.get(row["precision"])
        if baseline:
            row["peak_vs_full"] = row["peak_rss_mib"] / baseline["peak_rss_mib"]
            row["training_vs_full"] = row["training_mib"] / baseline["training_mib"]
            row["speed_vs_full"] = row["tokens_per_s"] / baseline["tokens_per_s"]
        if row["objective"] == "dpo" and row["precision"] in sft_lora:
            row["step_vs_sft"] = row["step_s"] / sft_lora[row["precision"]]["step_s"]
    from bench.common import print_table, write_json

    print_table(rows, ["objective", "peft", "precision", "checkpointing", "layout",
                       "trainable_params",
                       "tokens_per_s", "step_s", "peak_rss_mib", "training_mib", "peak_vs_full",
                       "training_vs_full", "speed_vs_full", "training_vs_no_ckpt",
                       "speed_vs_no_ckpt", "speed_vs_padded", "step_vs_sft"])  # fmt: skip
    name = "finetune" if args.device == "cpu" else f"finetune-{args.device}"
    settings = {"shape": args.shape, "seq_len": args.seq_len, "steps": args.steps,
                "rounds": args.rounds, "rows": args.rows, "device": args.device,
                "threads": args.threads}  # fmt: skip
    print(f"wrote {write_json(name, {'settings': settings, 'results': rows}, args.out)}")


if __name__ == "__main__":
    main()
