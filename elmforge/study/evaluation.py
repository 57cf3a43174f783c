"""Scoring a study's models the same way: held-out loss per document, optional zero-shot tasks.

Every model of a study is scored on the same held-out documents (taken in turn from each
source's validation split) with the same context, so losses compare across runs, checkpoints
and arms. Losses are kept per document: a loss difference between two models on the same
documents then has an interval (:func:`elmforge.study.stats.ratio_summary`), which is how sure
a single run's comparison (an average against the final model, early against late) can be.

Results are cached by the weights' sha256 and the evaluation settings
(:class:`EvaluationCache`), so an interrupted study re-scores nothing it already scored.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from elmforge.errors import DataError, ElmforgeError
from elmforge.files import atomic_write_json
from elmforge.layout import WEIGHTS
from elmforge.progress import Report, say
from elmforge.study.stats import ratio_summary

# Windows of one document scored in one forward pass.
WINDOWS_PER_BATCH = 8


@dataclass(frozen=True)
class EvalSettings:
    """What a score depends on besides the weights (the cache key's other half)."""

    documents: int
    context_length: int
    stride: int
    data_dir: str | None = None
    tasks: tuple[str, ...] | None = None
    limit: int | None = None
    allow_split_fallback: bool = False

    def key(self) -> str:
        values = asdict(self)
        if not values["allow_split_fallback"]:  # keys written before the field existed hold
            del values["allow_split_fallback"]
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def zero_shot_tasks(self) -> list[str] | None:
        """The tasks to score (the zero-shot suite by default), None without a data dir."""
        if self.data_dir is None:
            return None
        if self.tasks:
            return list(self.tasks)
        from elmforge.evaluate.suites import SUITES

        return list(SUITES["zero-shot"])

    def zero_shot_request(self) -> Any:
        """The lm-eval request of the zero-shot scores (None without a data dir); building it
        checks the numbers and the data dir, ``check_tasks`` the names and files."""
        tasks = self.zero_shot_tasks()
        if tasks is None:
            return None
        from elmforge.evaluate.request import EvalRequest

        return EvalRequest(
            tasks=tasks, num_fewshot=0, limit=self.limit, data_dir=self.data_dir,
            context_length=self.context_length, allow_split_fallback=self.allow_split_fallback,
        )  # fmt: skip


def settings_for(
    seq_len: int,
    documents: int,
    data_dir: str | None = None,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    allow_split_fallback: bool = False,
) -> EvalSettings:
    """Windows of the training context, advancing by half of it (each prediction sees at least
    half a training sequence of context, as in training's second half of every sequence)."""
    return EvalSettings(
        documents=documents,
        context_length=seq_len,
        stride=max(1, seq_len // 2),
        data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None,
        tasks=tuple(tasks) if tasks else None,
        limit=limit,
        allow_split_fallback=allow_split_fallback,
    )


def check_zero_shot_request(settings: EvalSettings) -> None:
    """Task names and local files checked before any training or loading (cheap)."""
    from elmforge.evaluate.harness import check_tasks

    request = settings.zero_shot_request()
    if request is not None:
        check_tasks(request)


# -- held-out documents -------------------------------------------------------------------------
def heldout_texts(sources: Sequence[Any], documents: int) -> list[str]:
    """The first ``documents`` non-empty validation documents, taken in turn from each source."""
    from elmforge.data.sources import iter_texts

    streams: list[Iterator[str]] = [iter_texts(source, "validation") for source in sources]
    texts: list[str] = []
    while streams and len(texts) < documents:
        for stream in list(streams):
            text = next((t for t in stream if t.strip()), None)
            if text is None:
                streams.remove(stream)
            elif len(texts) < documents:
                texts.append(text)
    if not texts:
        raise DataError("the validation split of the run's sources has no documents to score")
    return texts


# -- scoring --------------------------------------------------------------------------------------
@dataclass
class DocumentScores:
    """Summed negative log-likelihood (nats), predicted tokens and UTF-8 bytes per document."""

    nll: list[float]
    tokens: list[int]
    bytes: list[int]

    def summary(self) -> dict[str, Any]:
        loss = ratio_summary(self.nll, self.tokens)
        total_nll = math.fsum(self.nll)
        return {
            "val_loss": loss.mean,
            "val_ppl": math.exp(min(loss.mean, 700.0)),
            "val_loss_ci95": list(loss.ci95) if loss.ci95 else None,
            "bits_per_byte": total_nll / math.log(2) / sum(self.bytes),
            "eval_tokens": sum(self.tokens),
            "eval_documents": len(self.tokens),
        }


def score_documents(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    context_length: int,
    stride: int,
    report: Report | None = None,
) -> DocumentScores:
    """Each document scored on its own (bos then its tokens, every token predicted once), in
    the sliding windows of :mod:`elmforge.evaluate.perplexity`, whose totals this equals."""
    import torch

    from elmforge.evaluate.perplexity import document_windows, score_windows

    bos = tokenizer.bos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = DocumentScores([], [], [])
    started = last = time.monotonic()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for text in texts:
                token_ids = tokenizer(text, add_special_tokens=False).input_ids
                if bos is not None:
                    token_ids = [bos, *token_ids]
                if len(token_ids) < 2:
                    continue
                nll, count = 0.0, 0
                windows = document_windows(token_ids, context_length, stride)
                while batch := list(itertools.islice(windows, WINDOWS_PER_BATCH)):
                    batch_nll, batch_count = score_windows(model, batch, pad_id)
                    nll += batch_nll
                    count += batch_count
                scores.nll.append(nll)
                scores.tokens.append(count)
                scores.bytes.append(len(text.encode("utf-8")))
                now = time.monotonic()
                if report is not None and now - last >= 30:
                    last = now
                    rate = sum(scores.tokens) / (now - started)
                    report(f"  scored {len(scores.tokens)} documents ({rate:,.0f} tokens/s)")
    finally:
        model.train(was_training)
    if not scores.tokens:
        raise DataError("the held-out documents have no tokens to score")
    return scores


def zero_shot(model: Any, tokenizer: Any, settings: EvalSettings) -> dict[str, Any] | None:
    """Accuracy per task (lm-eval's headline metric: acc_norm where defined) and their mean."""
    request = settings.zero_shot_request()
    if request is None:
        return None
    from elmforge.evaluate.harness import evaluate_model
    from elmforge.evaluate.suites import headline_metric

    tasks = request.task_names
    report = evaluate_model(model, tokenizer, request)
    per_task: dict[str, Any] = {}
    for task in tasks:
        result = report["results"].get(task, {})
        metric = headline_metric(result)
        if metric is None:
            continue
        per_task[task] = {
            "metric": metric,
            "value": result[metric],
            "stderr": result.get(f"{metric}_stderr"),
            "n": result.get("n"),
        }
    values = [entry["value"] for entry in per_task.values()]
    return {"tasks": per_task, "mean": sum(values) / len(values) if values else None}


# -- models on disk ---------------------------------------------------------------------------------
def weights_sha256(model_dir: Path) -> str:
    """The sha256 of the model's weights (from a checkpoint's manifest when there is one)."""
    from elmforge.train.checkpoint import recorded_sha256, sha256_file

    model_dir = Path(model_dir)
    recorded = recorded_sha256(model_dir.parent, f"{model_dir.name}/{WEIGHTS}")
    if recorded is not None:
        return recorded
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ElmforgeError(f"{model_dir}: no {WEIGHTS}")
    return sha256_file(weights)


def load_for_scoring(model_dir: Path, tokenizer: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 (scores comparable on any device), GPU when there is one."""
    from elmforge.modeldir.loading import load

    loaded = load(model_dir, tokenizer=tokenizer, device="auto", dtype="float32")
    return loaded.model, loaded.tokenizer


def evaluate_loaded(
    model: Any, tokenizer: Any, texts: Sequence[str], settings: EvalSettings, report: Report
) -> dict[str, Any]:
    """Held-out scores (and zero-shot accuracy with a data dir) of an in-memory model."""
    started = time.monotonic()
    scores = score_documents(
        model, tokenizer, texts, settings.context_length, settings.stride, report
    )
    result: dict[str, Any] = {**scores.summary(), "document_nll": scores.nll,
                              "document_tokens": scores.tokens}  # fmt: skip
    accuracy = zero_shot(model, tokenizer, settings)
    if accuracy is not None:
        result["zero_shot"] = accuracy
    result["eval_seconds"] = round(time.monotonic() - started, 1)
    return result


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its per-document lists (for reports)."""
    return {k: v for k, v in result.items() if not k.startswith("document_")}


class EvaluationCache:
    """Scores by (weights sha256, settings key) in one JSON file, rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                self.entries = {}  # a damaged cache only costs re-scoring

    def get_or_score(
        self, sha256: str, settings: EvalSettings, score: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        key = f"{sha256}:{settings.key()}"
        if key not in self.entries:
            self.entries[key] = score()
            atomic_write_json(self.path, self.entries)
        return self.entries[key]


def evaluate_model_dir(
    model_dir: Path,
    texts: Sequence[str],
    settings: EvalSettings,
    cache: EvaluationCache,
    report: Report = say,
    label: str | None = None,
) -> dict[str, Any]:
    """Scores of the model directory ``model_dir``, from ``cache`` when already scored."""

    def score() -> dict[str, Any]:
        report(f"scoring {label or model_dir} on {len(texts)} held-out documents")
        model, tokenizer = load_for_scoring(model_dir)
        return evaluate_loaded(model, tokenizer, texts, settings, report)

    return cache.get_or_score(weights_sha256(model_dir), settings, score)
