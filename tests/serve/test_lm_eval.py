"""lm-eval scores a task through the server (its ``local-completions`` model: echo + prompt
log-probabilities over HTTP) and gets exactly the scores of `elmforge evaluate` (lm-eval's HFLM
on the model in memory), request by request within 1e-4 nats."""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import CONTEXT

TASKS = ["arc_easy", "winogrande"]
LIMIT = 8


def responses(sample: dict) -> list[float]:
    """The log-likelihood of each candidate answer lm-eval scored for one document."""
    return [float(response[0]) for response in sample["filtered_resps"]]


@pytest.mark.slow
def test_lm_eval_local_completions_equals_elmforge_evaluate(server, model_dir, task_dir, tmp_path):
    from lm_eval.api.registry import get_model

    from elmforge.evaluate.harness import EvalRequest, load_and_evaluate
    from elmforge.evaluate.lm_eval_glue import collect_results, quiet_lm_eval, run_lm_eval

    with quiet_lm_eval(verbose=False):
        lm = get_model("local-completions")(
            model=str(model_dir),  # the served name, and where lm-eval finds the tokenizer
            base_url=f"{server.api}/completions",
            tokenizer_backend="huggingface",
            tokenized_requests=True,
            add_bos_token=True,  # as elmforge evaluate (and Apple) score OpenELM
            max_length=CONTEXT,
            batch_size=4,  # several prompts per request
            max_retries=1,
        )
    request = EvalRequest(
        tasks=TASKS, limit=LIMIT, data_dir=task_dir, log_samples=True, out_dir=tmp_path / "ours"
    )
    over_http, plans = run_lm_eval(lm, TASKS, None, request)
    http_results = collect_results(over_http, plans)
    ours = load_and_evaluate(model_dir, request, device="cpu")  # `elmforge evaluate`'s function
    for task in TASKS:
        assert http_results[task]["n"] == ours["results"][task]["n"] == LIMIT
        for metric in ("acc", "acc_norm"):
            if metric in ours["results"][task]:
                assert http_results[task][metric] == ours["results"][task][metric], (task, metric)
        # The same numbers request by request, not only the same accuracies.
        rows = (tmp_path / "ours" / "samples" / f"{task}.jsonl").read_text().splitlines()
        local = [loglikelihood for row in rows for loglikelihood in responses(json.loads(row))]
        remote = [
            loglikelihood for row in over_http["samples"][task] for loglikelihood in responses(row)
        ]
        assert len(local) >= 2 * LIMIT
        assert remote == pytest.approx(local, abs=1e-4)
