"""Instruction prompts: a clean Alpaca template and LLM-Adapters' own bytes.

LLM-Adapters (AGI-Edgerunners/LLM-Adapters at 8166572, the commit Apple pinned for OpenELM's
LoRA/DoRA runs) builds its Alpaca-style prompts from indented triple-quoted f-strings in
``finetune.py``, so every line after the first starts with 16 spaces, the first line ends in one
space (with an input) or two (without), the blank line after it is empty and the later blank lines
hold 16 spaces. CoreNet copied the same function (``commonsense_170k.generate_prompt_and_response``)
for training and for its multiple-choice evaluation (``corenet-eval-llmadapters``), so a model
tuned on these bytes is scored on these bytes. :func:`llm_adapters_prompt` reproduces them
exactly (tests compare with the source's literal text); :func:`alpaca_prompt` is the usual clean
template for new data.
"""

from __future__ import annotations

from elmforge.errors import ConfigError

_INDENT = " " * 16
_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


def llm_adapters_prompt(instruction: str, input: str = "") -> str:
    """LLM-Adapters' training prompt up to (and including) the indentation the response follows.

    ``llm_adapters_prompt(i, x) + output`` is ``generate_prompt({"instruction": i, "input": x,
    "output": output})`` of LLM-Adapters' ``finetune.py``, byte for byte.
    """
    if input:
        head = _WITH_INPUT + " \n\n"
        body = [
            "### Instruction:",
            instruction,
            "",
            "### Input:",
            input,
            "",
            "### Response:",
            "",
        ]
    else:
        head = _WITHOUT_INPUT + "  \n\n"
        body = ["### Instruction:", instruction, "", "### Response:", ""]
    return head + "\n".join(_INDENT + line for line in body)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The standard Alpaca prompt (no stray spaces); the response follows it directly."""
    if input:
        return (
            f"{_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
            "### Response:\n"
        )
    return f"{_WITHOUT_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def instruction_prompt(style: str, instruction: str, input: str = "") -> str:
    """The text before the response for ``style`` ``alpaca`` or ``llm-adapters``."""
    if style == "alpaca":
        return alpaca_prompt(instruction, input)
    if style == "llm-adapters":
        return llm_adapters_prompt(instruction, input)
    raise ConfigError(f"prompt style {style!r}: expected alpaca or llm-adapters here")


def instruction_user_message(instruction: str, input: str = "") -> str:
    """The user turn an instruction row becomes with ``--prompt-style chat``."""
    return f"{instruction}\n\n{input}" if input else instruction
