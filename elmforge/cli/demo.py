"""`elmforge demo`: the whole lifecycle on the CPU in minutes, on text every Python carries.

Trains a BPE tokenizer on the built-in corpus, pretrains a tiny layer-wise-scaled OpenELM,
averages its last checkpoints, reports validation perplexity of the final and the averaged
model, and generates a continuation. Re-running with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from elmforge.config import add_config_flags, overrides_of
from elmforge.train.config import RunConfig

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
PROMPT = "def read_config(path):\n"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="pretrain, average, evaluate and sample a tiny OpenELM on the CPU (minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="run directory (runs/demo)")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config YAML (tiny-cpu)")
    p.add_argument("--vocab-size", type=int, default=4096, help="demo tokenizer size (4096)")
    p.add_argument("--average-last", type=int, default=3, help="checkpoints to average (3)")
    p.add_argument("--eval-documents", type=int, default=200, help="validation documents (200)")
    p.add_argument("--prompt", default=PROMPT, help="text to continue at the end")
    # Every run-config key is a flag, as for `elmforge pretrain`.
    add_config_flags(p, RunConfig, "run config overrides (see docs/pretrain.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.data.sources import iter_texts
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.evaluate.perplexity import perplexity
    from elmforge.infer.generate import SamplingOptions, generate_text
    from elmforge.model.convert import load_pretrained
    from elmforge.train.checkpoint import average_checkpoints, list_checkpoints
    from elmforge.train.loop import pretrain
    from elmforge.train.run_dir import RunDir

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The demo's own small BPE tokenizer (trained on the corpus by the run), whatever the config
    # says; flags given on the command line still win.
    overrides = ["data.tokenizer=bpe", f"data.bpe_vocab_size={args.vocab_size}"]
    config = RunConfig.from_yaml(args.config, [*overrides, *overrides_of(args)])
    run_dir = out / "run"
    print(f"[demo] pretraining {config.model.name} into {run_dir}")
    final_dir = pretrain(config, run_dir)
    tokenizer = load_tokenizer(RunDir(run_dir).tokenizer)

    checkpoints = list_checkpoints(run_dir)[-args.average_last :]
    averaged_dir = out / "averaged"
    print(
        f"[demo] averaging {len(checkpoints)} checkpoints: {', '.join(c.name for c in checkpoints)}"
    )
    average_checkpoints(checkpoints, averaged_dir)
    tokenizer.save_pretrained(averaged_dir)

    held_out = itertools.chain.from_iterable(
        iter_texts(source, split="validation") for source in config.data.sources
    )
    validation = list(itertools.islice(held_out, args.eval_documents))
    report = {}
    for label, directory in (("final", final_dir), ("averaged", averaged_dir)):
        model = load_pretrained(directory, dtype=None, device="cpu")
        report[label] = perplexity(model, tokenizer, validation)
        print(
            f"[demo] validation perplexity, {label} model: {report[label]['perplexity']:.2f}"
            f" ({report[label]['tokens']} tokens, {report[label]['bits_per_byte']:.3f} bits/byte)"
        )
    model = load_pretrained(averaged_dir, dtype=None, device="cpu")
    options = SamplingOptions(max_new_tokens=48, temperature=0.7, seed=0)
    print(f"[demo] sampling from the averaged model:\n{args.prompt}", end="", flush=True)
    sample = generate_text(model, tokenizer, args.prompt, options, on_text=_print_piece)
    print()
    report["sample"] = {"prompt": args.prompt, "continuation": sample}
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"[demo] done in {report['elapsed_s']:.0f} s")
    print(f"[demo] run directory: {run_dir}  (metrics.jsonl, TensorBoard events, checkpoints)")
    print(f"[demo] loss curve: {run_dir / 'loss.png'}")
    print(f"[demo] averaged model: {averaged_dir}  summary: {out / 'demo.json'}")
    return 0


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)
