"""Fine-tuning cost: tokens/s and peak memory of full fine-tuning vs LoRA vs DoRA, at 1 and 2
processes, with and without activation checkpointing and packing, and DPO vs SFT.

OpenELM-270M shape (random weights, LLaMA-2's 32000-token vocabulary), sequences of 256 tokens.
Each case runs in its own process, or its own ``torchrun --nproc-per-node 2`` (FSDP2 as in a real
run: gloo on CPU, NCCL on GPUs; peak RSS is a per-process high-water mark), and times the
optimizer step the training engine takes for a fine-tuning task (``elmforge.finetune.tasks`` on
``elmforge.train.engine.Engine.gradients``: forward, loss, backward, clipping; then AdamW) after
one untimed warm-up step; the adapters are CoreNet's recipe (rank 32, alpha 32, dropout 0.1 on
the embedding and the four projections). An SFT step takes ``--rows`` sequences per process, a
DPO step as many pairs (twice the policy tokens, plus the reference's forward pass); tokens/s
counts every process's tokens. Memory: the peak RSS (with 2 processes, the larger one's), and
the same minus the RSS after the imports (the interpreter, torch and transformers, the same in
every case). Cases take turns within each of ``--rounds`` rounds (medians).

Packing is measured on ``--mixed-rows`` examples per process of mixed lengths (up to
``--seq-len``): right-padded into one micro-batch ("pad") or packed into rows of ``--seq-len``
tokens ("pack"); both count real tokens only, so the two rows compare the same work.

    .venv/bin/python bench/finetune.py                  # CPU, all cases, 1 round of 3 steps
    .venv/bin/python bench/finetune.py --threads 1 --steps 1   # a shared 2-core machine
    .venv/bin/python bench/finetune.py --rounds 2 --steps 5
    .venv/bin/python bench/finetune.py --device cuda --seq-len 1024
    .venv/bin/python bench/finetune.py --cases sft/lora/fp32/-/pack/2

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

# objective, peft, precision, activation checkpointing ("ckpt") or not ("-"), layout ("-":
# --rows full-length sequences; "pad"/"pack": --mixed-rows examples of mixed lengths right-padded
# or packed), processes.
Case = tuple[str, str, str, str, str, int]
CASES: list[Case] = [
    ("sft", peft, "fp32", checkpointing, layout, processes)
    for processes in (1, 2)
    for peft in ("none", "lora", "dora")
    for checkpointing, layout in (("-", "-"), ("ckpt", "-"), ("-", "pad"), ("-", "pack"))
] + [("sft", "lora", "bf16", "-", "-", 1), ("dpo", "lora", "fp32", "-", "-", 1)]
KEYS = ("objective", "peft", "precision", "checkpointing", "layout", "processes")


def parse_case(text: str) -> Case:
    """``objective/peft/precision[/ckpt|-[/layout[/processes]]]`` (unsaid: -, -, 1)."""
    parts = text.split("/")
    parts += ["-", "-", "1"][max(0, len(parts) - 3) :]
    if len(parts) != 6 or not parts[5].isdigit() or int(parts[5]) < 1:
        sys.exit(f"--cases {text!r}: expected objective/peft/precision[/ckpt|-[/layout[/N]]]")
    objective, peft, precision, checkpointing, layout, processes = parts
    return objective, peft, precision, checkpointing, layout, int(processes)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: Case, args: argparse.Namespace) -> dict | None:
    """In this process (one rank of a torchrun case): build the model, time ``args.steps``
    optimizer steps, measure memory; the result on rank 0, None on the others."""
    import torch

    from elmforge.finetune import adapters
    from elmforge.finetune.config import FinetuneConfig
    from elmforge.finetune.tasks import DPOTask, SFTTask, make_batch, make_packed_batch
    from elmforge.finetune.tokenize import TokenRow
    from elmforge.model.config import OpenELMConfig
    from elmforge.model.modeling import OpenELMForCausalLM
    from elmforge.train import distributed as dist_utils
    from elmforge.train.engine import Engine, enable_activation_checkpointing
    from elmforge.train.optim import WarmupCosineSchedule

    objective, peft, precision, checkpointing, layout, _ = case
    imports_rss = _rss_mib()
    env = dist_utils.init_distributed(args.device)  # torchrun's process group, or one process
    device = env.device
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

    def row(seed: int) -> TokenRow:  # each process its own rows, as in a run
        generator = torch.Generator().manual_seed(seed + 1_000 * env.rank)
        ids = torch.randint(3, vocab, (args.seq_len + 1,), generator=generator).tolist()
        return TokenRow(ids, [False] * prompt + [True] * (args.seq_len + 1 - prompt))

    if layout in ("pad", "pack"):
        generator = torch.Generator().manual_seed(5 + env.rank)
        mixed = []
        for i in range(args.mixed_rows):
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
    memory = {"imports_rss_mib": imports_rss, "setup_rss_mib": rss_before,
              "peak_rss_mib": _rss_mib()}  # fmt: skip
    memory["training_mib"] = memory["peak_rss_mib"] - imports_rss
    if device.type == "cuda":
        memory["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    # Every process's memory; the table shows the largest (the one that must fit).
    per_process = dist_utils.all_gather_objects(memory, env)
    dist_utils.shutdown_distributed()
    if not env.is_main:
        return None
    result = {**dict(zip(KEYS, case)), "trainable_params": trainable, "step_s": step_s,
              "tokens_per_s": tokens / step_s}  # fmt: skip
    result.update({key: max(m[key] for m in per_process) for key in memory})
    return result


def child_command(case: Case, args: argparse.Namespace) -> list[str]:
    """One case in its own process, or under ``torchrun`` for several (standalone rendezvous)."""
    launcher = [sys.executable]
    if case[5] > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(case[5])]  # fmt: skip
    return [*launcher, __file__, "--child", "/".join(map(str, case)), "--shape", args.shape,
            "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--rows", str(args.rows),
            "--mixed-rows", str(args.mixed_rows), "--device", args.device,
            "--threads", str(args.threads)]  # fmt: skip


def twin(rows: list[dict], row: dict, **changes: object) -> dict | None:
    """The row of the case that differs from ``row``'s only by ``changes``."""
    wanted = {**{key: row[key] for key in KEYS}, **changes}
    return next((r for r in rows if all(r[key] == wanted[key] for key in KEYS)), None)


def add_ratios(rows: list[dict]) -> None:
    """Each row against the case it differs from in one setting."""
    comparisons = {  # column prefix: (what changes, which rows, the figures compared)
        "vs_full": ({"peft": "none"}, lambda r: r["peft"] != "none",
                    ("peak_rss_mib", "training_mib", "tokens_per_s")),
        "vs_no_ckpt": ({"checkpointing": "-"}, lambda r: r["checkpointing"] == "ckpt",
                       ("training_mib", "tokens_per_s")),
        "vs_padded": ({"layout": "pad"}, lambda r: r["layout"] == "pack", ("tokens_per_s",)),
        "vs_1proc": ({"processes": 1}, lambda r: r["processes"] > 1,
                     ("training_mib", "tokens_per_s")),
        "vs_sft": ({"objective": "sft"}, lambda r: r["objective"] == "dpo", ("step_s",)),
    }  # fmt: skip
    names = {"peak_rss_mib": "peak", "training_mib": "training", "tokens_per_s": "speed",
             "step_s": "step"}  # fmt: skip
    for row in rows:
        for suffix, (changes, applies, figures) in comparisons.items():
            other = twin(rows, row, **changes) if applies(row) else None
            if other is None:
                continue
            for figure in figures:
                row[f"{names[figure]}_{suffix}"] = row[figure] / other[figure]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="OpenELM-270M")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (3)")
    parser.add_argument(
        "--rows", type=int, default=1, help="sequences (DPO: pairs) per step and process (1)"
    )
    parser.add_argument("--mixed-rows", type=int, default=4,
                        help="examples per step and process of the pad/pack cases (4)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all cases (1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per process (0: torch's default)")  # fmt: skip
    parser.add_argument(
        "--cases",
        help="comma-separated objective/peft/precision/ckpt|-[/layout[/processes]], e.g. "
        "sft/lora/fp32/ckpt or sft/dora/fp32/-/pack/2",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON path (default bench/results/finetune[-DEVICE].json)")
    args = parser.parse_args()
    if args.child:
        result = run_case(parse_case(args.child), args)
        if result is not None:
            print(json.dumps(result))
        return
    cases = [parse_case(c) for c in args.cases.split(",")] if args.cases else CASES
    runs: dict[Case, list[dict]] = {case: [] for case in cases}
    for round_index in range(args.rounds):
        for case in cases:
            output = subprocess.run(child_command(case, args), capture_output=True, text=True)
            if output.returncode != 0:
                sys.exit(f"case {'/'.join(map(str, case))} failed:\n{output.stderr[-3000:]}")
            runs[case].append(json.loads(output.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1}: {'/'.join(map(str, case))} done", file=sys.stderr)
    rows = []
    for results in runs.values():
        row = dict(results[0])
        for key in ("step_s", "tokens_per_s", "peak_rss_mib", "setup_rss_mib", "training_mib"):
            row[key] = statistics.median(r[key] for r in results)
        rows.append(row)
    add_ratios(rows)
    from bench.common import print_table, write_json

    print_table(rows, [*KEYS, "trainable_params", "tokens_per_s", "step_s", "peak_rss_mib",
                       "training_mib", "peak_vs_full", "training_vs_full", "speed_vs_full",
                       "training_vs_no_ckpt", "speed_vs_no_ckpt", "speed_vs_padded",
                       "training_vs_1proc", "speed_vs_1proc", "step_vs_sft"])  # fmt: skip
    name = "finetune" if args.device == "cpu" else f"finetune-{args.device}"
    settings = {"shape": args.shape, "seq_len": args.seq_len, "steps": args.steps,
                "rounds": args.rounds, "rows": args.rows, "mixed_rows": args.mixed_rows,
                "device": args.device, "threads": args.threads}  # fmt: skip
    print(f"wrote {write_json(name, {'settings': settings, 'results': rows}, args.out)}")


if __name__ == "__main__":
    main()
