"""``elmforge data inspect``: what the pipeline makes of a config's sources, in one pass.

The same document processing as training (:class:`~elmforge.data.documents.DocumentProcessor`),
read without shuffling, per source: documents kept, what each filter dropped, bad rows, tokens,
sequences and the padding fraction, plus a few decoded sequences.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator
from typing import Any

from elmforge.data.config import DataConfig
from elmforge.data.documents import DocumentProcessor
from elmforge.data.loader import resolve_sources
from elmforge.data.sources import BadRow, iter_rows
from elmforge.data.stream import EMIT_STATS, READ_STATS, padding_fraction


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def inspect(
    config: DataConfig,
    max_documents: int | None = None,
    split: str = "train",
    tokenizer: Any = None,
    samples: int = 3,
) -> dict[str, Any]:
    """Per source: documents kept, what each filter dropped, bad rows, tokens, sequences and the
    padding fraction ``config.mode`` gives, over one pass (the first ``max_documents`` rows),
    plus ``samples`` decoded sequences. Returns ``{"sources": [...], "total": {...}}``."""
    resolved = resolve_sources(config, split)  # a source without files is reported first
    if tokenizer is None:
        from elmforge.data.tokenizer_choice import resolve_tokenizer

        # Progress to stderr: stdout is the report (``data inspect --json`` must stay JSON).
        tokenizer, _ = resolve_tokenizer(config, report=_to_stderr)
    processor = DocumentProcessor(tokenizer, config)
    length = config.seq_len + 1
    reports = []
    for source, missing in resolved:
        counts = dict.fromkeys(READ_STATS + EMIT_STATS, 0)
        counts["bad_rows"] = len(missing)
        head: list[int] = []  # the first tokens, for the decoded samples
        rows = iter_rows(source, split, config.max_bad_rows, missing)
        if max_documents is not None:
            rows = itertools.islice(rows, max_documents)
        for block in _batched(rows, config.shuffle_buffer):
            texts = []
            for row in block:
                if isinstance(row, BadRow):
                    counts["bad_rows"] += 1
                else:
                    texts.append(row)
            for result in processor.process(texts):
                if isinstance(result, str):
                    counts[result] += 1
                    continue
                counts["documents"] += 1
                counts["tokens"] += len(result)
                pieces = math.ceil(len(result) / length)
                if config.mode == "padding":
                    counts["sequences"] += pieces
                    counts["padding_tokens"] += pieces * length - len(result)
                    if len(head) < samples * length:
                        head.extend(result.tolist() + [None] * (pieces * length - len(result)))
                elif len(head) < samples * length:
                    head.extend(result.tolist())
        if config.mode == "packing":
            counts["sequences"] = counts["tokens"] // length
        texts = []
        for i in range(0, min(len(head), samples * length), length):
            ids = [t for t in head[i : i + length] if t is not None]
            if len(head) - i >= length or config.mode == "padding":
                texts.append(tokenizer.decode(ids, skip_special_tokens=False))
        reports.append(
            {
                "source": source.name,
                **counts,
                "padding_fraction": padding_fraction(counts),
                "samples": texts,
            }
        )
    total = {key: sum(r[key] for r in reports) for key in READ_STATS + EMIT_STATS}
    total["padding_fraction"] = padding_fraction(total)
    return {"sources": reports, "total": total, "mode": config.mode, "seq_len": config.seq_len}


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while block := list(itertools.islice(iterator, size)):
        yield block


def format_inspect_report(report: dict[str, Any], sample_chars: int = 300) -> str:
    """The Markdown table (and decoded samples) that ``elmforge data inspect`` prints."""
    columns = ["documents", "dropped_min_characters", "dropped_min_tokens", "bad_rows", "tokens"]
    columns += ["sequences", "padding_fraction"]
    lines = [
        f"mode {report['mode']}, seq_len {report['seq_len']}",
        "",
        "| source | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in [*report["sources"], {"source": "**total**", **report["total"]}]:
        cells = [f"{row[c]:.4f}" if c == "padding_fraction" else f"{row[c]:,}" for c in columns]
        lines.append(f"| {row['source']} | " + " | ".join(cells) + " |")
    for source in report["sources"]:
        for i, sample in enumerate(source.get("samples", [])):
            shown = sample if len(sample) <= sample_chars else sample[:sample_chars] + " [...]"
            lines += ["", f"sample {i + 1} of {source['source']}:", shown]
    return "\n".join(lines) + "\n"
