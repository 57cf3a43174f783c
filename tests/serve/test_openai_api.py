"""A real `elmforge serve` process called with the official OpenAI client: models, completions and
chat, streaming equal to non-streaming, usage equal to the tokenizer's counts, greedy output equal
to `elmforge generate`, stop strings, echo log-probabilities equal to the model's own."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from elmforge.data.chat import render_chat
from tests.cli_support import run_elmforge
from tests.serve.server_support import wait_until_idle

PROMPT = "Question: which animal is small? Answer:"
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "the cat and the dog"},
]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(model_dir):
    from elmforge.modeldir.loading import load_model

    return load_model(model_dir, device="cpu", dtype="fp32")


def streamed_completion(client, **request) -> tuple[str, str, dict]:
    text, finish, usage = [], None, None
    for chunk in client.completions.create(stream=True, **request):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def streamed_chat(client, **request) -> tuple[str, str, dict]:
    text, finish, usage = [], None, None
    for chunk in client.chat.completions.create(stream=True, **request):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def test_models_list_and_health(client, server, model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [str(model_dir)]
    assert client.models.retrieve(str(model_dir)).id == str(model_dir)
    health = server.health()
    assert health["status"] == "ok" and health["max_batch"] == 16


def test_greedy_completion_equals_elmforge_generate(client, model_dir):
    result = client.completions.create(
        model=str(model_dir), prompt=PROMPT, max_tokens=20, temperature=0
    )
    proc = run_elmforge(
        "generate", model_dir, "--prompt", PROMPT, "--greedy", "--max-new-tokens", "20"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PROMPT + result.choices[0].text + "\n"


def test_streaming_equals_non_streaming(client, model_dir):
    for seed, temperature in ((None, 0), (11, 1.0)):
        request = dict(model=str(model_dir), prompt=PROMPT, max_tokens=24, seed=seed,
                       temperature=temperature, stream_options={"include_usage": True})  # fmt: skip
        text, finish, usage = streamed_completion(client, **request)
        request.pop("stream_options")
        whole = client.completions.create(**request)
        assert (text, finish) == (whole.choices[0].text, whole.choices[0].finish_reason)
        assert usage == whole.usage.model_dump()

    request = dict(model=str(model_dir), messages=MESSAGES, max_tokens=24, temperature=0)
    text, finish, usage = streamed_chat(client, stream_options={"include_usage": True}, **request)
    whole = client.chat.completions.create(**request)
    assert whole.choices[0].message.role == "assistant"
    assert (text, finish) == (whole.choices[0].message.content, whole.choices[0].finish_reason)
    assert usage == whole.usage.model_dump()


def test_usage_counts_equal_the_tokenizers(client, model_dir, tokenizer):
    result = client.completions.create(
        model=str(model_dir),
        prompt=PROMPT,
        max_tokens=9,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert result.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert result.usage.completion_tokens == 9 and result.choices[0].finish_reason == "length"
    assert result.usage.total_tokens == result.usage.prompt_tokens + 9

    chat = client.chat.completions.create(model=str(model_dir), messages=MESSAGES, max_tokens=5,
                                          extra_body={"ignore_eos": True})  # fmt: skip
    rendered = render_chat(MESSAGES, add_generation_prompt=True, eos_token=tokenizer.eos_token)
    assert chat.usage.prompt_tokens == len(tokenizer(rendered)["input_ids"])
    assert chat.usage.completion_tokens == 5


def test_seed_makes_sampling_reproducible(client, model_dir):
    def sample(seed: int) -> str:
        return client.completions.create(
            model=str(model_dir), prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9,
            seed=seed, extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1},
        ).choices[0].text  # fmt: skip

    assert sample(5) == sample(5)
    assert len({sample(s) for s in range(4)}) > 1


def test_stop_strings_end_the_text_and_never_leak_while_streaming(client, model_dir):
    request = dict(model=str(model_dir), prompt=PROMPT, temperature=0)
    full = client.completions.create(max_tokens=40, extra_body={"ignore_eos": True}, **request)
    text = full.choices[0].text
    assert len(text) > 12
    stop = text[6:10]  # a stop string spanning token boundaries, somewhere in the middle
    expected = text[: text.find(stop)]
    for streamed in (False, True):
        kwargs = dict(max_tokens=40, stop=[stop, "\x00never"], extra_body={"ignore_eos": True})
        if streamed:
            pieces = [
                choice.text
                for chunk in client.completions.create(stream=True, **kwargs, **request)
                for choice in chunk.choices
            ]
            assert "".join(pieces) == expected
            assert not any(stop in p for p in pieces)
        else:
            result = client.completions.create(**kwargs, **request)
            assert result.choices[0].text == expected
            assert result.choices[0].finish_reason == "stop"


def test_echo_logprobs_are_the_models_own(client, model_dir, model, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    result = client.completions.create(
        model=str(model_dir), prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=2
    )
    block = result.choices[0].logprobs
    assert len(block.token_logprobs) == len(ids) + 1
    assert block.token_logprobs[0] is None and block.top_logprobs[0] is None
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for t in range(1, len(ids)):
        assert block.token_logprobs[t] == pytest.approx(logprobs[t - 1, ids[t]].item(), abs=1e-4)
        assert max(block.top_logprobs[t].values()) == pytest.approx(
            logprobs[t - 1].max().item(), abs=1e-4
        )
    assert block.token_logprobs[-1] == pytest.approx(logprobs[-1].max().item(), abs=1e-4)
    assert result.choices[0].text.startswith(tokenizer.decode(ids))
    assert block.text_offset[0] == 0 and block.text_offset == sorted(block.text_offset)

    streamed_text, streamed_logprobs = [], []
    for chunk in client.completions.create(
        model=str(model_dir), prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=2,
        stream=True,
    ):  # fmt: skip
        for choice in chunk.choices:
            streamed_text.append(choice.text)
            if choice.logprobs is not None:
                streamed_logprobs += choice.logprobs.token_logprobs
    assert "".join(streamed_text) == result.choices[0].text
    assert streamed_logprobs == block.token_logprobs


def test_chat_logprobs_and_several_prompts(client, model_dir):
    chat = client.chat.completions.create(
        model=str(model_dir), messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3,
        temperature=0, extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 6
    for entry in content:
        values = [alt.logprob for alt in entry.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert entry.logprob <= 0 and entry.logprob == pytest.approx(values[0], abs=1e-5)

    prompts = [PROMPT, "the small cat", "red"]
    batch = client.completions.create(model=str(model_dir), prompt=prompts, max_tokens=8,
                                      temperature=0)  # fmt: skip
    assert [c.index for c in batch.choices] == [0, 1, 2]
    for prompt, choice in zip(prompts, batch.choices):
        alone = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=8,
                                          temperature=0)  # fmt: skip
        assert choice.text == alone.choices[0].text


def test_work_stops_when_the_client_disconnects(server, model_dir):
    body = {"model": str(model_dir), "prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True}
    before = wait_until_idle(server, timeout=20)["generated_tokens"]
    with httpx.stream("POST", f"{server.api}/completions", json={**body, "stream": True},
                      timeout=60) as response:  # fmt: skip
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # it is generating
    after_stream = wait_until_idle(server, timeout=20)["generated_tokens"]
    assert after_stream - before < 1000

    # The client gives up long before the 1,000 tokens are done (0.74-0.89 s on 2 quiet cores
    # since the model's work has the scheduler's thread to itself; 0.5 s left too little margin).
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.api}/completions", json=body, timeout=0.1)
    after_plain = wait_until_idle(server, timeout=20)["generated_tokens"]
    assert after_plain - after_stream < 1000
