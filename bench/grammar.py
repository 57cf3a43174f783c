"""Structured output's per-token cost: llguidance's allowed-token mask (compute and apply) and
consuming the picked token, on a tokenizer's whole vocabulary, against a plain argmax.

    .venv/bin/python bench/grammar.py [--tokenizer ../shared/data/llama2-tokenizer.model]

Samples from random logits under a JSON schema (names, integers, enums) until the JSON is whole,
a few times over; reports milliseconds per token. Writes ``bench/results/grammar.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "bird"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared/data/llama2-tokenizer.model"
    parser.add_argument("--tokenizer", default=str(default), help="tokenizer file or directory")
    parser.add_argument("--runs", type=int, default=5, help="JSON answers sampled")
    parser.add_argument("--out", help="JSON path (default: bench/results/grammar.json)")
    args = parser.parse_args()
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.serve.grammar import GrammarCompiler

    tokenizer = load_tokenizer(args.tokenizer)
    vocab = len(tokenizer)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    compiler = GrammarCompiler(tokenizer, vocab, eos)
    started = time.perf_counter()
    grammar = compiler.compile(SCHEMA)
    compile_ms = (time.perf_counter() - started) * 1000
    torch.manual_seed(0)
    mask_ms, accept_ms, argmax_ms, tokens = [], [], [], 0
    for _ in range(args.runs):
        row = compiler.matcher(grammar)
        for _ in range(400):
            logits = torch.randn(vocab)
            started = time.perf_counter()
            int(logits.argmax())
            argmax_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            row.constrain(logits)
            mask_ms.append((time.perf_counter() - started) * 1000)
            token = int(torch.multinomial(torch.softmax(logits, -1), 1))
            started = time.perf_counter()
            done = row.accept(token)
            accept_ms.append((time.perf_counter() - started) * 1000)
            tokens += 1
            if done:
                break
    rows = [
        {"step": "compile the schema (once per request)", "ms": compile_ms},
        {"step": "mask: compute and apply (per token)", "ms": statistics.median(mask_ms)},
        {"step": "consume the token (per token)", "ms": statistics.median(accept_ms)},
        {"step": "plain argmax, for scale (per token)", "ms": statistics.median(argmax_ms)},
    ]
    print(f"llguidance on a {vocab}-token vocabulary, {tokens} tokens (medians)")
    print_table(rows, ["step", "ms"])
    write_json("grammar", {"vocab": vocab, "tokens": tokens, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
