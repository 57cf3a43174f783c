"""LLM-Adapters' prompt, byte for byte, and the clean Alpaca template."""

from __future__ import annotations

from elmforge.data.prompts import alpaca_prompt, instruction_prompt, llm_adapters_prompt

# generate_prompt of AGI-Edgerunners/LLM-Adapters finetune.py at 8166572 (lines 323-343), written
# out by hand: 16-space indents, two trailing spaces (one with an input) on the first line, an
# empty line after it, later blank lines of 16 spaces.
PAD = " " * 16
EXPECTED_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.  \n"
    "\n"
    f"{PAD}### Instruction:\n"
    f"{PAD}Pick one.\nAnswer format: answer1/answer2\n"
    f"{PAD}\n"
    f"{PAD}### Response:\n"
    f"{PAD}the correct answer is answer2"
)
EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request. \n"
    "\n"
    f"{PAD}### Instruction:\n"
    f"{PAD}Translate.\n"
    f"{PAD}\n"
    f"{PAD}### Input:\n"
    f"{PAD}bonjour\n"
    f"{PAD}\n"
    f"{PAD}### Response:\n"
    f"{PAD}hello"
)


def test_llm_adapters_training_prompt_is_byte_exact() -> None:
    prompt = llm_adapters_prompt("Pick one.\nAnswer format: answer1/answer2")
    assert prompt + "the correct answer is answer2" == EXPECTED_WITHOUT_INPUT
    assert llm_adapters_prompt("Translate.", "bonjour") + "hello" == EXPECTED_WITH_INPUT
    assert instruction_prompt("llm-adapters", "Translate.", "bonjour") + "hello" == (
        EXPECTED_WITH_INPUT
    )


def test_alpaca_prompt_has_no_stray_whitespace() -> None:
    prompt = alpaca_prompt("Name a colour.")
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    )
    with_input = alpaca_prompt("Translate.", "bonjour")
    assert "### Input:\nbonjour\n\n### Response:\n" in with_input
    assert not any(line != line.rstrip() for line in with_input.splitlines())
