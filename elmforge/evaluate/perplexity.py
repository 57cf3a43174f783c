"""Sliding-window perplexity over any text source of the data pipeline.

Written here rather than taken from lm-eval because lm-eval's perplexity tasks are tied to their
own datasets, while this scores any source of ``elmforge.data.sources`` (the built-in corpus's
validation split, local shards, hub datasets) and reports bits per byte, which compares models
with different tokenizers.

Each document is scored separately: ``bos`` then its tokens, every token predicted exactly once.
Windows hold at most ``context_length`` input tokens and advance by ``stride`` predicted tokens,
so every prediction after the first window sees at least ``context_length - stride`` tokens of
context (the Hugging Face "perplexity of fixed-length models" scheme).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from elmforge.errors import DataError, ElmforgeError, OptionError
from elmforge.modeldir.loading import context_length_of
from elmforge.progress import interactive


@dataclass
class Window:
    input_ids: list[int]  # tokens fed to the model
    target_ids: list[int]  # the next token at each input position
    first_scored: int  # targets before this index are context already scored by a previous window


def document_windows(token_ids: list[int], context_length: int, stride: int) -> Iterator[Window]:
    """Windows over one document so that tokens 1..n-1 are each predicted once."""
    n = len(token_ids)
    predict_from = 1
    while predict_from < n:
        predict_to = min(predict_from + stride, n)  # predict tokens [predict_from, predict_to)
        begin = max(0, predict_to - 1 - context_length)
        yield Window(
            input_ids=token_ids[begin : predict_to - 1],
            target_ids=token_ids[begin + 1 : predict_to],
            first_scored=predict_from - 1 - begin,
        )
        predict_from = predict_to


class Progress:
    """A tqdm bar on a terminal; a plain line every ``every_s`` seconds otherwise (logs, CI)."""

    def __init__(self, desc: str, unit: str, every_s: float = 30.0) -> None:
        self.desc, self.unit, self.every_s = desc, unit, every_s
        self.count = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr)

    def update(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            print(
                f"{self.desc}: {self.count} {self.unit} ({rate:.0f} {self.unit}/s)", file=sys.stderr
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.inference_mode()
def score_windows(model: Any, windows: list[Window], pad_id: int) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and count of the scored targets in ``windows``."""
    device = next(model.parameters()).device
    width = max(len(w.input_ids) for w in windows)
    inputs = torch.full((len(windows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(windows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        length = len(window.input_ids)
        inputs[row, :length] = torch.tensor(window.input_ids)
        attention[row, :length] = 1
        scored = torch.tensor(window.target_ids[window.first_scored :])
        targets[row, window.first_scored : length] = scored
    logits = model(input_ids=inputs.to(device), attention_mask=attention.to(device)).logits
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.to(device).reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return float(nll), int((targets != -100).sum())


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Token-level perplexity of ``model`` on ``texts`` (each a separate document).

    Returns ``tokens`` (predicted tokens), ``loss`` (mean NLL in nats), ``perplexity``
    (``exp(loss)``), ``bits_per_byte`` (total NLL in bits over the UTF-8 bytes of the texts),
    ``documents``, ``bytes``, ``context_length`` and ``stride``.
    """
    if context_length is None:
        context_length = context_length_of(model)
    if stride is None:
        stride = max(1, context_length // 2)
    if context_length < 1 or not 1 <= stride <= context_length:
        raise ElmforgeError(
            f"perplexity: need 1 <= stride ({stride}) <= context length ({context_length})"
        )
    if batch_size < 1:
        raise ElmforgeError(f"perplexity: batch size {batch_size} must be >= 1")
    bos = tokenizer.bos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens, total_bytes, documents = 0.0, 0, 0, 0
    progress = Progress("perplexity", "tok")
    batch: list[Window] = []

    def flush() -> None:
        nonlocal total_nll, total_tokens
        nll, count = score_windows(model, batch, pad_id)
        total_nll += nll
        total_tokens += count
        progress.update(count)
        batch.clear()

    was_training = model.training
    model.eval()
    try:
        for text in texts:
            if not text:
                continue
            token_ids = tokenizer(text, add_special_tokens=False).input_ids
            if bos is not None:
                token_ids = [bos, *token_ids]
            if len(token_ids) < 2:
                continue
            documents += 1
            total_bytes += len(text.encode("utf-8"))
            for window in document_windows(token_ids, context_length, stride):
                batch.append(window)
                if len(batch) == batch_size:
                    flush()
        if batch:
            flush()
    finally:
        progress.close()
        model.train(was_training)
    if total_tokens == 0:
        raise DataError("perplexity: the data has no text to score")
    loss = total_nll / total_tokens
    return {
        "tokens": total_tokens,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nll / math.log(2) / total_bytes,
        "documents": documents,
        "bytes": total_bytes,
        "context_length": context_length,
        "stride": stride,
    }


def parse_source_spec(spec: str | dict) -> str | dict:
    """A data-pipeline source: a spec string (path, glob, ``builtin:...``, ``hf:...``) or JSON."""
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            source = json.loads(spec)
        except json.JSONDecodeError as err:
            raise OptionError(
                "perplexity_data", f"{{option}} {spec}: not valid JSON ({err.msg})", "--perplexity"
            ) from None
        if not isinstance(source, dict):
            raise OptionError(
                "perplexity_data", f"{{option}} {spec}: expected a JSON object", "--perplexity"
            )
        return source
    return spec


def perplexity_of_source(
    model: Any,
    tokenizer: Any,
    source: str | dict,
    split: str = "validation",
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    max_documents: int | None = None,
) -> dict[str, Any]:
    """:func:`perplexity` over a data source (the first ``max_documents`` documents if given)."""
    from elmforge.data.sources import iter_texts

    source = parse_source_spec(source)
    texts: Iterable[str] = iter_texts(source, split)
    if max_documents is not None:
        import itertools

        texts = itertools.islice(texts, max_documents)
    result = perplexity(model, tokenizer, texts, context_length, stride, batch_size)
    return {
        "source": source if isinstance(source, (str, dict)) else str(source),
        "split": split,
        **result,
    }
