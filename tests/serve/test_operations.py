"""Operations on a real `elmforge serve` process: /metrics parses as Prometheus text and counts
what was sent, /tokenize and /detokenize (vLLM's shapes), one log line per request, aborted
streams free their slots, and SIGTERM shuts down gracefully with exit status 0."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.server_support import running_server, wait_until_idle

PROMPT = "Question: which animal is small? Answer:"


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics, through prometheus' own parser."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def first_data(lines) -> str:
    """The first server-sent event's line (sse-starlette sends ': ping' comments while idle)."""
    return next(line for line in lines if line and not line.startswith(":"))


def test_metrics_count_the_requests_sent(server, model_dir):
    wait_until_idle(server)
    before = scrape(server)
    body = {"model": str(model_dir), "prompt": PROMPT, "max_tokens": 5, "ignore_eos": True}
    for stream in (False, True, False):
        response = httpx.post(
            f"{server.api}/completions", json={**body, "stream": stream}, timeout=60
        )
        assert response.status_code == 200
    assert (
        httpx.post(f"{server.api}/completions", json={"prompt": 3}, timeout=10).status_code == 400
    )
    prompt_tokens = len(
        httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    )
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    endpoint = "/v1/completions"
    assert delta("elmforge_requests_total", endpoint=endpoint, status="200") == 3
    assert delta("elmforge_requests_total", endpoint=endpoint, status="400") == 1
    assert delta("elmforge_generation_tokens_total") == 15
    assert delta("elmforge_prompt_tokens_total") == 3 * prompt_tokens
    assert delta("elmforge_time_to_first_token_seconds_count") == 3
    assert delta("elmforge_inter_token_latency_seconds_count") == 12
    assert value(after, "elmforge_requests_running") == 0
    assert value(after, "elmforge_requests_waiting") == 0
    assert value(after, "elmforge_batch_occupancy") == 0
    log = server.stderr()
    assert "POST /v1/completions 200 prompt=" in log and "generated=5 " in log
    assert "POST /v1/completions 400 " in log


def test_tokenize_and_detokenize_round_trip(server, model_dir, tokenizer):
    answer = httpx.post(f"{server.url}/tokenize", json={"model": str(model_dir), "prompt": PROMPT})
    assert answer.status_code == 200
    tokens = answer.json()["tokens"]
    assert tokens == tokenizer(PROMPT)["input_ids"]
    assert answer.json()["count"] == len(tokens) and answer.json()["max_model_len"] > 0
    plain = httpx.post(
        f"{server.url}/tokenize",
        json={"prompt": PROMPT, "add_special_tokens": False, "return_token_strs": True},
    ).json()
    assert plain["tokens"] == tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert len(plain["token_strs"]) == plain["count"]
    chat = httpx.post(
        f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": "the cat"}]}
    )
    assert chat.status_code == 200 and chat.json()["count"] > 2
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": plain["tokens"]})
    assert back.status_code == 200 and back.json()["prompt"].strip() == PROMPT
    wrong = httpx.post(f"{server.url}/detokenize", json={"tokens": [10**9]})
    assert wrong.status_code == 400 and "tokens" in wrong.json()["error"]["message"]
    both = httpx.post(f"{server.url}/tokenize", json={"prompt": "a", "messages": []})
    assert both.status_code == 400


def test_aborted_streams_free_their_slots(server, model_dir):
    body = {"model": str(model_dir), "prompt": PROMPT, "max_tokens": 900, "ignore_eos": True}
    for _ in range(20):
        with httpx.stream(
            "POST", f"{server.api}/completions", json={**body, "stream": True}, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert first_data(lines).startswith("data: ")  # generating; leave mid-way
    wait_until_idle(server, timeout=30)
    assert value(scrape(server), "elmforge_requests_running") == 0
    started = time.monotonic()
    answer = httpx.post(
        f"{server.api}/completions", json={**body, "max_tokens": 8}, timeout=60
    ).json()
    assert answer["usage"]["completion_tokens"] == 8
    assert time.monotonic() - started < 10


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_gracefully_with_status_0(model_dir, tmp_path, sig):
    """A request running when the signal comes finishes (within the grace time), then the
    process exits 0; one that would outlast the grace time is cut off."""
    with running_server(model_dir, log_dir=tmp_path) as server:
        body = {"prompt": PROMPT, "ignore_eos": True, "stream": True}
        endless = threading.Thread(target=read_stream, args=(server, {**body, "max_tokens": 1000}))
        endless.start()
        with httpx.stream(
            "POST", f"{server.api}/completions", json={**body, "max_tokens": 20}, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert first_data(lines).startswith("data: ")
            server.process.send_signal(sig)
            rest = list(lines)
        assert "data: [DONE]" in rest
        assert server.process.wait(timeout=30) == 0, server.stderr()
        endless.join(timeout=30)
        assert "stopped" in server.stderr()


def read_stream(server, body: dict) -> None:
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream("POST", f"{server.api}/completions", json=body, timeout=60) as response,
    ):
        for _ in response.iter_lines():
            pass
