"""Generation options shared by generate, chat and serve: streamed text and stop strings,
speculative decoding equal to plain greedy, the context rule, sampling processors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elmforge import OpenELMForCausalLM
from elmforge.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from elmforge.infer.detokenize import TextAssembler, held_back_length
from elmforge.infer.generate import (
    ContextOverflowError,
    OptionError,
    SamplingOptions,
    generate_text,
)
from tests.cli_support import run_elmforge
from tests.shapes import micro_config

CORPUS = [f"def function_{i}(x):\n    return x + {i}  # done\n" for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=320)


def micro(vocab: int, seed: int = 0, **overrides) -> OpenELMForCausalLM:
    torch.manual_seed(seed)
    config = micro_config(vocab_size=vocab, **overrides)
    return OpenELMForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return micro(len(tokenizer))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("gen-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def stream(assembler: TextAssembler, ids: list[int]) -> list[str]:
    pieces = [assembler.push(i) for i in ids]
    return [*pieces, assembler.finish() if assembler.stop_found is None else ""]


# -- text assembly ------------------------------------------------------------------------------
def test_held_back_length():
    assert held_back_length("abc</", ["</s>"]) == 2
    assert held_back_length("abc", ["</s>", "c#"]) == 1
    assert held_back_length("abc", []) == 0
    assert held_back_length("ab</s", ["</s>"]) == 3


def test_sentencepiece_spaces_and_split_characters(llama2_tokenizer_path):
    tokenizer = load_tokenizer(llama2_tokenizer_path)
    prompt = tokenizer("Hello")["input_ids"]
    generated = tokenizer("Hello world 🦙 done", add_special_tokens=False)["input_ids"][1:]
    pieces = stream(TextAssembler(tokenizer, prompt), generated)
    # Decoding the generated ids alone would lose the leading space of "▁world".
    assert "".join(pieces) == " world 🦙 done"
    assert not any("\ufffd" in p for p in pieces)  # the llama's four byte tokens come as one
    assert "🦙" in pieces


def test_stop_strings_spanning_tokens_never_leak(tokenizer):
    text = "def function_7(x):\n    return x + 7  # done\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop in ("return x", "# do", "7  #"):
        expected = text[: text.find(stop)]
        assembler = TextAssembler(tokenizer, stop=[stop, "never seen"])
        pieces = stream(assembler, ids)
        assert "".join(pieces) == expected == assembler.text
        assert assembler.stop_found == stop
    # A held-back beginning of a stop string that never completes is released at the end.
    unfinished = tokenizer(text.rstrip(), add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tokenizer, stop=["done!"])
    pieces = stream(assembler, unfinished)
    assert "".join(pieces) == text.rstrip() and pieces[-1].endswith("done")
    assert "done" not in "".join(pieces[:-1])


# -- generation ---------------------------------------------------------------------------------
def greedy(model, tokenizer, prompt, n=30, **extra):
    options = SamplingOptions(max_new_tokens=n, greedy=True, ignore_eos=True, **extra)
    return generate_text(model, tokenizer, prompt, options)


@pytest.mark.slow
def test_prompt_lookup_and_draft_model_equal_plain_greedy(model, tokenizer):
    prompt = "def function_12(x):\n    return x + 12\ndef function_12(x):\n"
    plain = greedy(model, tokenizer, prompt)
    assert greedy(model, tokenizer, prompt, prompt_lookup=3) == plain
    draft = micro(len(tokenizer), seed=1)  # a different model proposes, ours decides
    assert greedy(model, tokenizer, prompt, draft_model=draft) == plain
    assert plain.completion_tokens == 30


@pytest.mark.slow
def test_draft_model_flag_through_the_cli(model, model_dir, tmp_path, tokenizer):
    draft_dir = tmp_path / "draft"
    micro(len(tokenizer), seed=2).save_pretrained(draft_dir)
    prompt = "def function_"
    drafted = run_elmforge("generate", model_dir, "--prompt", prompt, "--greedy",
                           "--max-new-tokens", "12", "--draft-model", draft_dir)  # fmt: skip
    assert drafted.returncode == 0, drafted.stderr
    plain = generate_text(model, tokenizer, prompt, SamplingOptions(max_new_tokens=12, greedy=True))
    assert drafted.stdout == prompt + plain.text + "\n"


def test_prompt_tokens_are_never_dropped(model, tokenizer):
    context = model.config.max_context_length
    words = tokenizer("def function_1(x):", add_special_tokens=False)["input_ids"]
    long_ids = [1] + words * (context // len(words) + 1)
    with pytest.raises(ContextOverflowError, match=f"the prompt is {len(long_ids)} tokens"):
        greedy(model, tokenizer, long_ids)
    prompt = long_ids[: context - 5]
    notices = []
    options = SamplingOptions(max_new_tokens=50, greedy=True, ignore_eos=True)
    result = generate_text(model, tokenizer, prompt, options, report=notices.append)
    assert result.completion_tokens == 5 and result.finish_reason == "length"
    assert notices == [f"generating at most 5 tokens, not 50: the prompt is {context - 5} tokens "
                       f"and the context {context}"]  # fmt: skip


def test_generation_runs_to_the_context_past_the_rope_table(tokenizer):
    model = micro(len(tokenizer), max_context_length=96, rope_max_length=32)
    result = greedy(model, tokenizer, "def function_", n=200)
    prompt_tokens = len(tokenizer("def function_")["input_ids"])
    assert result.completion_tokens == 96 - prompt_tokens  # stopped at the context, no crash


def test_sampling_options(model, tokenizer):
    prompt = "def function_3(x):"
    plain = greedy(model, tokenizer, prompt, n=12).text

    def sample(**options):
        settings = {"temperature": 1.0, "top_k": None, "top_p": None, **options}
        full = SamplingOptions(max_new_tokens=12, ignore_eos=True, **settings)
        return generate_text(model, tokenizer, prompt, full).text

    assert sample(top_k=1, seed=0) == plain  # only the likeliest token is left
    assert sample(min_p=1.0, seed=1) == plain
    assert sample(seed=3) == sample(seed=3)
    assert len({sample(seed=s) for s in range(4)}) > 1
    assert sample(top_k=1, seed=0, repetition_penalty=5.0) != plain
    assert sample(top_k=1, seed=0, frequency_penalty=2.0) != plain


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (dict(max_new_tokens=0), "--max-new-tokens"),
        (dict(temperature=-0.5), "--temperature"),
        (dict(top_p=1.5), "--top-p"),
        (dict(top_k=-3), "--top-k"),
        (dict(min_p=2.0), "--min-p"),
        (dict(repetition_penalty=0.0), "--repetition-penalty"),
        (dict(prompt_lookup=0), "--prompt-lookup"),
        (dict(temperature=float("nan")), "--temperature"),
    ],
)
def test_option_checks_name_the_field_and_the_flag(options, flag):
    (field,) = options
    with pytest.raises(OptionError, match=f"^{field} ") as raised:
        SamplingOptions(**options).check()
    assert raised.value.option == field
    assert raised.value.for_command_line().startswith(f"{flag} ")
