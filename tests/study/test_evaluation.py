"""Held-out scoring: the same documents for every model, totals equal to evaluate.perplexity."""

from __future__ import annotations

import itertools

import pytest

from elmforge.data.sources import iter_texts
from elmforge.evaluate.perplexity import perplexity
from elmforge.study.evaluation import (
    EvaluationCache,
    heldout_texts,
    load_for_scoring,
    score_documents,
    settings_for,
    weights_sha256,
)
from elmforge.train.checkpoint import sha256_file

DOCS, STDLIB = {"name": "builtin:python-docs"}, {"name": "builtin:python-stdlib"}


def test_heldout_documents_take_turns_between_sources():
    docs = list(iter_texts(DOCS, "validation"))
    stdlib = list(itertools.islice(iter_texts(STDLIB, "validation"), 6))
    texts = heldout_texts([DOCS, STDLIB], 6)
    # python-docs has 2 held-out topics; after them the other source fills the count.
    assert len(docs) == 2
    assert texts == [docs[0], stdlib[0], docs[1], stdlib[1], stdlib[2], stdlib[3]]
    assert heldout_texts([DOCS, STDLIB], 6) == texts  # deterministic


def test_scores_equal_the_perplexity_module(micro_run_dir):
    model, tokenizer = load_for_scoring(micro_run_dir / "final")
    texts = heldout_texts([DOCS, STDLIB], 4)
    scores = score_documents(model, tokenizer, texts, context_length=32, stride=16)
    peer = perplexity(model, tokenizer, texts, context_length=32, stride=16)
    summary = scores.summary()
    assert summary["eval_tokens"] == peer["tokens"]
    assert summary["val_loss"] == pytest.approx(peer["loss"], rel=1e-6)
    assert summary["bits_per_byte"] == pytest.approx(peer["bits_per_byte"], rel=1e-6)
    low, high = summary["val_loss_ci95"]
    assert low < summary["val_loss"] < high
    # Each document alone is what the perplexity module gives for it alone.
    alone = perplexity(model, tokenizer, texts[1:2], context_length=32, stride=16)
    assert scores.nll[1] / scores.tokens[1] == pytest.approx(alone["loss"], rel=1e-6)


def test_cache_scores_each_model_once(tmp_path, micro_run_dir):
    settings = settings_for(32, 4)
    calls = []
    cache = EvaluationCache(tmp_path / "cache.json")
    sha = weights_sha256(micro_run_dir / "final")
    assert sha == sha256_file(micro_run_dir / "final" / "model.safetensors")
    first = cache.get_or_score(sha, settings, lambda: calls.append(1) or {"val_loss": 1.5})
    again = EvaluationCache(tmp_path / "cache.json").get_or_score(
        sha, settings, lambda: calls.append(1) or {"val_loss": 9.9}
    )
    assert first == again == {"val_loss": 1.5} and len(calls) == 1
    other = EvaluationCache(tmp_path / "cache.json").get_or_score(
        sha, settings_for(32, 5), lambda: calls.append(1) or {"val_loss": 2.5}
    )
    assert other == {"val_loss": 2.5} and len(calls) == 2


def test_settings_key_and_zero_shot_request(tmp_path):
    plain = settings_for(32, 4)
    assert plain.zero_shot_request() is None  # no data dir: no tasks
    with_data = settings_for(32, 4, data_dir=str(tmp_path), limit=3)
    request = with_data.zero_shot_request()
    assert request.task_names == ["arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa",
                                  "sciq", "winogrande"]  # fmt: skip
    assert (request.num_fewshot, request.limit, request.context_length) == (0, 3, 32)
    assert not request.allow_split_fallback
    fallback = settings_for(32, 4, data_dir=str(tmp_path), allow_split_fallback=True)
    assert fallback.zero_shot_request().allow_split_fallback
    # Every setting is in the key; the fallback only when set, so older caches stay valid.
    keys = {s.key() for s in (plain, with_data, fallback, settings_for(32, 4, tasks=["piqa"]))}
    assert len(keys) == 4
    assert settings_for(32, 4, allow_split_fallback=False).key() == plain.key()
