"""Structured output on a real `elmforge serve` process: a JSON-schema request answered by a
random tiny model validates against its schema (jsonschema) while three unconstrained streams
decode in the same batch; streaming and non-streaming agree; both endpoints; an unsupported
schema is a 400 naming the construct."""

from __future__ import annotations

import json
import re
import threading

import httpx
import jsonschema
import pytest

from tests.serve.server_support import wait_until_idle
from tests.serve.test_operations import first_data

PROMPT = "Question: which animal is small? Answer:"
SCHEMA = {
    "type": "object",
    "properties": {
        "pet": {"enum": ["cat", "dog", "bird"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


def streamed_text(response: httpx.Response, chat: bool) -> tuple[str, str]:
    text, finish = [], None
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:])["choices"]:
            text.append(choice["delta"].get("content", "") if chat else choice["text"])
            finish = choice["finish_reason"] or finish
    return "".join(text), finish


def test_a_json_schema_answer_validates_while_unconstrained_rows_share_the_batch(server):
    wait_until_idle(server)
    free = {"prompt": PROMPT, "max_tokens": 900, "ignore_eos": True, "stream": True}
    running, stop = threading.Barrier(4), threading.Event()

    def unconstrained() -> None:
        with httpx.stream("POST", f"{server.api}/completions", json=free, timeout=120) as r:
            lines = r.iter_lines()  # kept: closing the iterator closes the connection
            first_data(lines)
            running.wait(timeout=60)
            stop.wait(timeout=120)  # leaving cancels the row

    threads = [threading.Thread(target=unconstrained) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        running.wait(timeout=60)
        body = {
            "prompt": PROMPT,
            "max_tokens": 120,
            "temperature": 0,
            "response_format": JSON_SCHEMA,
        }
        plain = httpx.post(f"{server.api}/completions", json=body, timeout=120).json()
        shared = server.health()["running"]
        with httpx.stream(
            "POST", f"{server.api}/completions", json={**body, "stream": True}, timeout=120
        ) as response:
            streamed, finish = streamed_text(response, chat=False)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert shared >= 3  # the unconstrained rows were still decoding beside it
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "stop" == finish
    jsonschema.validate(json.loads(choice["text"]), SCHEMA)
    assert streamed == choice["text"]


def test_chat_json_schema_and_json_object(server):
    messages = [{"role": "user", "content": "the cat and the dog"}]
    body = {"messages": messages, "max_tokens": 120, "temperature": 0}
    answer = httpx.post(
        f"{server.api}/chat/completions", json={**body, "response_format": JSON_SCHEMA}, timeout=120
    ).json()["choices"][0]
    assert answer["finish_reason"] == "stop"
    jsonschema.validate(json.loads(answer["message"]["content"]), SCHEMA)
    with httpx.stream(
        "POST",
        f"{server.api}/chat/completions",
        json={**body, "response_format": JSON_SCHEMA, "stream": True},
        timeout=120,
    ) as response:
        assert streamed_text(response, chat=True) == (answer["message"]["content"], "stop")
    loose = httpx.post(
        f"{server.api}/chat/completions",
        json={**body, "max_tokens": 60, "response_format": {"type": "json_object"}},
        timeout=120,
    ).json()["choices"][0]
    content = loose["message"]["content"]
    assert content.startswith("{")
    if loose["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "propertyNames": {"pattern": "^a"}}}}, "propertyNames"),
        ({"type": "xml"}, "response_format.type 'xml'"),
        ({"type": "json_schema", "json_schema": {"schema": []}}, "schema object"),
        ("json", "expected an object with a type"),
    ],
)  # fmt: skip
def test_unsupported_response_formats_are_400_naming_the_construct(server, response_format, words):
    response = httpx.post(
        f"{server.api}/completions",
        json={"prompt": PROMPT, "max_tokens": 4, "response_format": response_format},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and words in error["message"]


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"guided_regex": r"[0-9]{3}-[a-z]{2}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
        ({"structured_outputs": {"regex": r"(yes|no)!"}}, lambda t: t in ("yes!", "no!")),
        ({"guided_choice": ["cat", "dog", "small bird"]}, lambda t: t in ("cat", "dog", "small bird")),
        ({"guided_grammar": 'start: "(" num ("+" num)* ")"\nnum: /[1-9]/'},
         lambda t: re.fullmatch(r"\([1-9](\+[1-9])*\)", t)),
        ({"guided_json": json.dumps(SCHEMA)}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ],
    ids=["regex", "structured-outputs-regex", "choice", "lark-grammar", "guided-json"],
)  # fmt: skip
def test_vllm_guided_fields_constrain_both_endpoints(server, fields, check):
    """vLLM's extension fields (what JSON cannot say) on completions and chat, streamed too."""
    for path, body in (
        ("completions", {"prompt": PROMPT}),
        ("chat/completions", {"messages": [{"role": "user", "content": "pick one"}]}),
    ):
        body = {**body, **fields, "max_tokens": 80, "temperature": 0}
        answer = httpx.post(f"{server.api}/{path}", json=body, timeout=120).json()["choices"][0]
        chat = path.startswith("chat")
        text = answer["message"]["content"] if chat else answer["text"]
        assert answer["finish_reason"] == "stop", answer
        assert check(text), text
        with httpx.stream("POST", f"{server.api}/{path}", json={**body, "stream": True},
                          timeout=120) as response:  # fmt: skip
            assert streamed_text(response, chat=chat) == (text, "stop")


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"guided_regex": "(unclosed"}, "guided_regex", "unsupported regular expression"),
        ({"guided_regex": ""}, "guided_regex", "non-empty string"),
        ({"guided_choice": []}, "guided_choice", "list of non-empty strings"),
        ({"guided_choice": ["a", 3]}, "guided_choice", "list of non-empty strings"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar", "unsupported grammar"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "one of"),
        ({"structured_outputs": {"xml": "a"}}, "structured_outputs", "one of"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "only one output constraint"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex",
         "only one output constraint"),
    ],
)  # fmt: skip
def test_bad_guided_fields_are_400_naming_the_field(server, fields, param, words):
    response = httpx.post(f"{server.api}/completions",
                          json={"prompt": PROMPT, "max_tokens": 4, **fields}, timeout=30)  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
