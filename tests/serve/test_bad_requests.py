"""Bad HTTP requests: each gets a 4xx with OpenAI's error body naming the problem, and the server
keeps serving. Also the API key, the bounded queue (503) and the exposure warning."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from elmforge.serve.server import exposure_warning
from tests.serve.conftest import CONTEXT
from tests.serve.server_support import running_server

C, CHAT = "/v1/completions", "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "cat " * (CONTEXT + 10)

# (name, path, body (dict, or raw bytes/str), status, param, words the message must contain)
CASES = [
    ("not json", C, b"{prompt: 1", 400, None, "not valid JSON"),
    ("empty body", C, b"", 400, None, "not valid JSON"),
    ("json array", C, [1, 2], 400, None, "JSON object"),
    ("json string", CHAT, "hello", 400, None, "JSON object"),
    ("missing prompt", C, {"max_tokens": 4}, 400, "prompt", "required"),
    ("prompt number", C, {"prompt": 3}, 400, "prompt", "expected a string"),
    ("prompt empty list", C, {"prompt": []}, 400, "prompt", "expected a string"),
    ("prompt mixed list", C, {"prompt": ["a", 3]}, 400, "prompt", "prompt[1]"),
    ("token id too big", C, {"prompt": [1, 2, 10**6]}, 400, "prompt", "outside the vocabulary"),
    ("token id negative", C, {"prompt": [[1, -5]]}, 400, "prompt", "outside the vocabulary"),
    ("empty token list", C, {"prompt": [[1], []]}, 400, "prompt", "prompt[1]"),
    ("max_tokens negative", C, {"prompt": "a", "max_tokens": -3}, 400, "max_tokens", "at least 1"),
    ("max_tokens zero", C, {"prompt": "a", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("max_tokens huge", C, {"prompt": "a", "max_tokens": 10**12}, 400, "max_tokens", "at most"),
    ("max_tokens string", C, {"prompt": "a", "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ("max_tokens float", C, {"prompt": "a", "max_tokens": 2.5}, 400, "max_tokens", "integer"),
    ("max_tokens bool", C, {"prompt": "a", "max_tokens": True}, 400, "max_tokens", "integer"),
    ("prompt too long", C, {"prompt": LONG_PROMPT}, 400, "prompt", "maximum context length"),
    ("prompt + max_tokens too long", CHAT, {"messages": USER, "max_tokens": CONTEXT},
     400, "max_tokens", "maximum context length"),
    ("temperature high", C, {"prompt": "a", "temperature": 3}, 400, "temperature", "between 0"),
    ("temperature negative", CHAT, {"messages": USER, "temperature": -1}, 400, "temperature", "between 0"),
    ("temperature string", C, {"prompt": "a", "temperature": "hot"}, 400, "temperature", "number"),
    ("top_p zero", C, {"prompt": "a", "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("top_p above one", CHAT, {"messages": USER, "top_p": 1.5}, 400, "top_p", "(0, 1]"),
    ("top_k negative", C, {"prompt": "a", "top_k": -7}, 400, "top_k", ">= 1"),
    ("min_p above one", C, {"prompt": "a", "min_p": 2}, 400, "min_p", "[0, 1]"),
    ("repetition_penalty zero", C, {"prompt": "a", "repetition_penalty": 0}, 400,
     "repetition_penalty", "> 0"),
    ("presence_penalty", C, {"prompt": "a", "presence_penalty": 5}, 400, "presence_penalty", "-2 and 2"),
    ("seed string", C, {"prompt": "a", "seed": "x"}, 400, "seed", "integer"),
    ("seed too big", C, {"prompt": "a", "seed": 2**70}, 400, "seed", "64 bits"),
    ("stop number", C, {"prompt": "a", "stop": 5}, 400, "stop", "string"),
    ("stop empty string", C, {"prompt": "a", "stop": [""]}, 400, "stop", "empty"),
    ("too many stops", C, {"prompt": "a", "stop": [str(i) for i in range(40)]}, 400, "stop", "at most"),
    ("n two", C, {"prompt": "a", "n": 2}, 400, "n", "only 1"),
    ("best_of", C, {"prompt": "a", "best_of": 3}, 400, "best_of", "only 1"),
    ("logprobs too many", C, {"prompt": "a", "logprobs": 50}, 400, "logprobs", "between 0"),
    ("logprobs bool on completions", C, {"prompt": "a", "logprobs": True}, 400, "logprobs", "integer"),
    ("top_logprobs without logprobs", CHAT, {"messages": USER, "top_logprobs": 2}, 400,
     "top_logprobs", "requires logprobs"),
    ("echo string", C, {"prompt": "a", "echo": "yes"}, 400, "echo", "true or false"),
    ("stream number", C, {"prompt": "a", "stream": 1}, 400, "stream", "true or false"),
    ("stream_options without stream", C, {"prompt": "a", "stream_options": {"include_usage": True}},
     400, "stream_options", "only allowed"),
    ("stream_options unknown key", CHAT, {"messages": USER, "stream": True,
     "stream_options": {"x": 1}}, 400, "stream_options", "include_usage"),
    ("min_tokens above max", C, {"prompt": "a", "max_tokens": 2, "min_tokens": 5}, 400,
     "min_tokens", "between 0"),
    ("unknown field", C, {"prompt": "a", "max_token": 5}, 400, "max_token", "unrecognized"),
    ("suffix", C, {"prompt": "a", "suffix": "end"}, 400, "suffix", "not supported"),
    ("tools", CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ("unknown model", C, {"prompt": "a", "model": "gpt-4"}, 404, "model", "does not exist"),
    ("model not a string", C, {"prompt": "a", "model": 7}, 400, "model", "string"),
    ("messages missing", CHAT, {"max_tokens": 3}, 400, "messages", "non-empty list"),
    ("messages empty", CHAT, {"messages": []}, 400, "messages", "non-empty list"),
    ("message not an object", CHAT, {"messages": ["hi"]}, 400, "messages", "messages[0]"),
    ("unknown role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages",
     "wizard"),
    ("content number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages",
     "content"),
    ("image content", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url",
     "image_url": {"url": "x"}}]}]}, 400, "messages", "text"),
    ("roles out of order", CHAT, {"messages": [{"role": "assistant", "content": "x"}]}, 400,
     "messages", "out of order"),
    ("max_tokens disagree", CHAT, {"messages": USER, "max_tokens": 3, "max_completion_tokens": 4},
     400, "max_completion_tokens", "disagree"),
    ("max_completion_tokens negative", CHAT, {"messages": USER, "max_completion_tokens": -1}, 400,
     "max_completion_tokens", "at least 1"),
    # JSON may spell a lone surrogate, which no tokenizer encodes (once a 500 and a traceback).
    ("prompt lone surrogate", C, b'{"prompt": "\\ud800 x"}', 400, "prompt", "not valid UTF-8"),
    ("prompt list lone surrogate", C, b'{"prompt": ["ok", "\\udfff"]}', 400, "prompt",
     "not valid UTF-8"),
    ("message lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
     400, "messages", "not valid UTF-8"),
    ("stop lone surrogate", C, b'{"prompt": "a", "stop": ["\\ud83d"]}', 400, "stop",
     "not valid UTF-8"),
    ("deep nesting", C, b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, None,
     "not valid JSON"),
]  # fmt: skip


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def post(http: httpx.Client, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"Content-Type": "application/json"})
    return http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def assert_openai_error(response: httpx.Response, status: int, param=None, words: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    assert words in error["message"], error


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_gets_openai_error(http, path, body, status, param, words):
    assert_openai_error(post(http, path, body), status, param, words)


def test_the_server_keeps_serving_after_bad_requests(http, server, model_dir):
    assert len(CASES) >= 30
    for _, path, body, *_ in CASES:  # all of them again, back to back
        assert 400 <= post(http, path, body).status_code < 500
    assert_openai_error(http.get("/v1/nothing"), 404, words="Not Found")
    assert_openai_error(http.get(C), 405, words="Method Not Allowed")
    good = post(http, C, {"model": str(model_dir), "prompt": "the cat", "max_tokens": 3})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1
    assert server.process.poll() is None
    assert "Traceback" not in server.stderr()


def test_oversized_body_is_413(model_dir, tmp_path):
    flags = ("--max-request-bytes", "2048")
    with running_server(model_dir, *flags, log_dir=tmp_path) as server:
        big = {"prompt": "cat " * 4000, "max_tokens": 1}
        response = httpx.post(f"{server.api}/completions", json=big, timeout=60)
        assert_openai_error(response, 413, words="larger than 2048 bytes")

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"cat " * 50
            yield b'"}'

        response = httpx.post(f"{server.api}/completions", content=chunks(), timeout=60)
        assert_openai_error(response, 413, words="larger than 2048 bytes")
        ok = httpx.post(f"{server.api}/completions", json={"prompt": "cat", "max_tokens": 2})
        assert ok.status_code == 200


def test_api_key_full_queue_and_speculative_decoding(model_dir, tmp_path, server):
    flags = ("--api-key", "sesame", "--max-batch", "1", "--max-queue", "1", "--prompt-lookup", "3")
    with running_server(model_dir, *flags, log_dir=tmp_path) as guarded:
        assert httpx.get(f"{guarded.url}/health").status_code == 200  # open without a key
        assert httpx.get(f"{guarded.url}/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            response = httpx.get(f"{guarded.api}/models", headers=headers)
            assert_openai_error(response, 401, words="API key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=guarded.api, api_key="nope").models.list()
        client = openai.OpenAI(base_url=guarded.api, api_key="sesame", max_retries=0)
        assert client.models.list().data[0].id == str(model_dir)

        long = dict(model=str(model_dir), prompt="the cat", max_tokens=900,
                    extra_body={"ignore_eos": True}, stream=True)  # fmt: skip
        running = client.completions.create(**long)  # occupies the only batch slot
        next(iter(running))
        waiting = client.completions.create(**long)  # its headers come back at once
        try:
            with pytest.raises(openai.APIStatusError) as refused:
                client.completions.create(model=str(model_dir), prompt="x", max_tokens=1)
            assert refused.value.status_code == 503
            assert "busy" in refused.value.body["message"]
        finally:
            running.close()
            waiting.close()
        deadline = time.monotonic() + 30
        while guarded.health("sesame")["waiting"]:  # until the server has seen the client leave
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ok = client.completions.create(model=str(model_dir), prompt="x", max_tokens=1)
        assert ok.usage.completion_tokens == 1

        # Speculative decoding (prompt lookup, one request at a time) decodes like plain greedy.
        greedy = dict(model=str(model_dir), prompt="the cat and the cat and the", max_tokens=30,
                      temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
        plain = openai.OpenAI(base_url=server.api, api_key="unused").completions.create(**greedy)
        speculative = client.completions.create(**greedy)
        assert speculative.choices[0].text == plain.choices[0].text
        assert speculative.usage == plain.usage
        with pytest.raises(openai.BadRequestError, match="speculatively"):
            client.completions.create(**greedy, logprobs=1)


def test_a_body_shorter_than_its_content_length_is_one_log_line(server, model_dir):
    """A client announces 1000 bytes, sends 10 and closes: the server logs one line (no
    traceback) and goes on serving."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    before = server.stderr()
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     b'{"prompt":')  # fmt: skip
    deadline = time.monotonic() + 30
    while "closed the connection before sending its body" not in server.stderr():
        assert time.monotonic() < deadline, server.stderr()[len(before) :]
        time.sleep(0.05)
    new = server.stderr()[len(before) :]
    assert "Traceback" not in new and "ClientDisconnect" not in new, new
    assert len([line for line in new.splitlines() if "closed the connection" in line]) == 1
    good = httpx.post(f"{server.api}/completions", json={"prompt": "the", "max_tokens": 1},
                      timeout=300)  # fmt: skip
    assert good.status_code == 200


def test_api_key_scheme_case_and_what_health_tells_a_stranger(model_dir, tmp_path):
    with running_server(model_dir, "--api-key", "sesame", log_dir=tmp_path) as guarded:
        for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme name is case-insensitive
            headers = {"Authorization": f"{scheme} sesame"}
            assert httpx.get(f"{guarded.api}/models", headers=headers).status_code == 200
        assert_openai_error(
            httpx.get(f"{guarded.api}/models", headers={"Authorization": "Basic sesame"}), 401,
            words="API key",
        )  # fmt: skip
        # /health stays open, but tells a caller without the key only that the server is up.
        assert httpx.get(f"{guarded.url}/health").json() == {"status": "ok"}
        wrong = {"Authorization": "Bearer wrong"}
        assert httpx.get(f"{guarded.url}/health", headers=wrong).json() == {"status": "ok"}
        full = httpx.get(f"{guarded.url}/health", headers={"Authorization": "bearer sesame"})
        assert full.json()["model"] == str(model_dir) and "waiting" in full.json()


def test_binding_beyond_loopback_warns():
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)
    warning = exposure_warning("192.168.1.5", "key")
    assert "reachable from other machines" in warning and "API key" not in warning
