"""Throughput of the data pipeline alone against what one CPU training step consumes.

Reads the built-in corpus (``builtin:python-stdlib`` + ``builtin:python-docs``) through
``build_train_loader`` with the LLaMA-2 tokenizer (NFC, both filters, tokenisation, packing,
shuffling, batching) with 0, 1 and 2 DataLoader workers and reports tokens per second, measured
from the loader's creation (worker start-up and the first shuffle block included). The
baselines, timed in the same run: the Rust tokenizer alone on the same documents (the ceiling),
and the tokens per second one CPU training step of OpenELM-tiny consumes (forward, backward,
AdamW) at the same batch shape: the pipeline must outrun it by a wide margin.

    .venv/bin/python bench/data.py [--tokens 2000000] [--workers 0 1 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One tokenizer thread per process (set TOKENIZERS_PARALLELISM=true to let the Rust tokenizer
# use every core): the training step needs the cores, and DataLoader workers are how the
# pipeline scales, which is what this measures.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from bench.common import print_table, write_json
from elmforge.data.config import DataConfig
from elmforge.data.loader import build_train_loader
from elmforge.data.sources import iter_texts
from elmforge.data.tokenizer import default_tokenizer_path, load_tokenizer


def data_config(seq_len: int, shuffle_buffer: int) -> DataConfig:
    return DataConfig.from_dict(
        {
            "sources": [
                {"name": "builtin:python-stdlib", "weight": 0.9},
                {"name": "builtin:python-docs", "weight": 0.1},
            ],
            "min_characters": 200,
            "min_tokens": 64,
            "seq_len": seq_len,
            "shuffle_buffer": shuffle_buffer,
            "max_bad_rows": 10,
        }
    )


def pipeline_rate(config: DataConfig, tokenizer, batch: int, workers: int, tokens: int) -> dict:
    start = time.perf_counter()
    loader = build_train_loader(config, tokenizer, batch, num_workers=workers)
    next(loader)
    first = time.perf_counter() - start
    consumed = batch * (config.seq_len + 1)
    while consumed < tokens:
        next(loader)
        consumed += batch * (config.seq_len + 1)
    elapsed = time.perf_counter() - start
    loader.close()
    steady = (consumed - batch * (config.seq_len + 1)) / (elapsed - first)
    return {
        "tokens": consumed,
        "seconds": elapsed,
        "first_batch_s": first,
        "steady_tokens_per_s": steady,
    }


def tokenizer_rate(tokenizer, tokens: int) -> dict:
    texts, total_chars = [], 0
    for text in iter_texts("builtin:python-stdlib"):
        texts.append(text)
        total_chars += len(text)
        if total_chars > tokens * 3:  # about 3.3 characters per LLaMA token on Python code
            break
    start = time.perf_counter()
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    elapsed = time.perf_counter() - start
    return {"tokens": sum(len(e.ids) for e in encodings), "seconds": elapsed}


def training_rate(batch: int, seq_len: int, steps: int) -> dict:
    from elmforge import OpenELMConfig, OpenELMForCausalLM

    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_name("OpenELM-tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randint(3, 32000, (batch, seq_len))
    samples = []
    for step in range(steps + 1):
        begin = time.perf_counter()
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            samples.append(time.perf_counter() - begin)
    seconds = statistics.median(samples)
    return {"tokens": batch * seq_len, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3_000_000, help="tokens per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8, help="micro batch (sequences)")
    parser.add_argument("--seq-len", type=int, default=256, help="OpenELM-tiny's context")
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--out", help="JSON path (default bench/results/data.json)")
    args = parser.parse_args()

    spec = default_tokenizer_path()
    if spec is None:
        sys.exit("bench/data.py: needs the LLaMA-2 tokenizer.model under ../shared/data")
    tokenizer = load_tokenizer(spec)
    config = data_config(args.seq_len, args.shuffle_buffer)
    rows = []
    train = training_rate(args.batch, args.seq_len, args.train_steps)
    train_rate = train["tokens"] / train["seconds"]
    rows.append({"what": "OpenELM-tiny CPU training step (baseline)", **train})
    # Loaders with workers first: once the main process has run a batch encode, tokenizers
    # disables its thread pool in forked workers (as it would not in training, where the main
    # process never tokenises when workers are used).
    pipelines = {}
    for workers in sorted(args.workers, reverse=True):
        pipelines[workers] = pipeline_rate(config, tokenizer, args.batch, workers, args.tokens)
    raw = tokenizer_rate(tokenizer, args.tokens)
    rows.append({"what": "Rust tokenizer alone (encode_batch)", **raw})
    for workers in sorted(pipelines):
        rows.append({"what": f"pipeline, {workers} workers", **pipelines[workers]})
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["x_training"] = row["tokens_per_s"] / train_rate
    print(f"batch {args.batch} x seq_len {args.seq_len}, LLaMA-2 tokenizer, built-in corpus")
    columns = ["what", "tokens", "seconds", "first_batch_s", "tokens_per_s"]
    print_table(rows, [*columns, "steady_tokens_per_s", "x_training"])
    path = write_json("data", {"args": vars(args), "rows": rows}, args.out)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
