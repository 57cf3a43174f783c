"""Scoring is not vacuous: log-likelihoods match a plain forward pass; a forced answer wins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from elmforge.evaluate import evaluate_model
from tests.evaluate.eval_helpers import _write_jsonl


def plain_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | <s> context) with one forward pass, no lm-eval code involved."""
    context_ids = [tokenizer.bos_token_id, *tokenizer(context, add_special_tokens=False).input_ids]
    continuation_ids = tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = range(len(context_ids) - 1, ids.shape[1] - 1)
    return float(sum(logprobs[p, ids[0, p + 1]] for p in positions))


def test_loglikelihoods_and_accuracy_match_a_plain_forward_pass(
    tiny_model, tokenizer, task_dir, tmp_path
):
    report = evaluate_model(
        tiny_model,
        tokenizer,
        tasks=["arc_easy"],
        data_dir=task_dir,
        out_dir=tmp_path,
        log_samples=True,
    )
    samples = [json.loads(line) for line in (tmp_path / "samples" / "arc_easy.jsonl").open()]
    assert len(samples) == 8
    correct, correct_norm = [], []
    for sample in samples:
        lls = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ours = plain_loglikelihood(tiny_model, tokenizer, context, continuation)
            assert resp[0][0] == pytest.approx(ours, abs=1e-3)
            lls.append(ours)
        choices = sample["doc"]["choices"]["text"]
        lengths = np.array([len(c) for c in choices], dtype=float)
        correct.append(int(np.argmax(lls)) == sample["target"])
        correct_norm.append(int(np.argmax(np.array(lls) / lengths)) == sample["target"])
    assert report["results"]["arc_easy"]["acc"] == pytest.approx(np.mean(correct))
    assert report["results"]["arc_easy"]["acc_norm"] == pytest.approx(np.mean(correct_norm))


@pytest.mark.parametrize(("forced", "expected"), [(" yes", 0.75), (" no", 0.25)])
def test_model_forced_to_one_answer_scores_its_share(
    tiny_model, tokenizer, tmp_path, forced, expected
):
    # BoolQ with 6 "yes" (label 1) and 2 "no": a model that always says `forced` scores the
    # share of that answer, whatever the random weights would have chosen.
    labels = [1, 1, 1, 0, 1, 1, 0, 1]
    rows = [
        {"question": f"is it {i}", "passage": "a cat sat on a mat", "idx": i, "label": label}
        for i, label in enumerate(labels)
    ]
    _write_jsonl(tmp_path / "boolq" / "validation.super_glue.jsonl", rows)
    yes_ids = set(tokenizer(" yes", add_special_tokens=False).input_ids)
    no_ids = set(tokenizer(" no", add_special_tokens=False).input_ids)
    assert not yes_ids & no_ids
    boosted = sorted(yes_ids if forced == " yes" else no_ids)

    def boost(module, args, output):
        output.logits[..., boosted] += 100.0

    handle = tiny_model.register_forward_hook(boost)
    try:
        report = evaluate_model(tiny_model, tokenizer, tasks=["boolq"], data_dir=tmp_path)
    finally:
        handle.remove()
    assert report["results"]["boolq"]["acc"] == pytest.approx(expected)
