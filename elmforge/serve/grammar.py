"""Structured output: ``response_format`` (``json_object``, ``json_schema``) through llguidance.

Why llguidance (pinned in pyproject): it is a maintained engine (Microsoft's guidance; vLLM,
SGLang and llama.cpp use it), one small wheel with no dependencies that installs on a CPU-only
Python 3.11, and it compiles a JSON schema lazily, so the first token does not wait for a
whole automaton. xgrammar, the other candidate, pulls in triton (hundreds of MB, useless on
a CPU build of torch). Measured cost (``bench/grammar.py``, LLaMA-2's 32,000-token vocabulary, Intel Xeon, 2 shared
cores): 0.25 ms per token to compute and apply the allowed-token mask, 0.01 ms to consume the
token, 1.7 ms to compile a schema once per request: next to the tens to hundreds of
milliseconds of a 270M decode step on two cores, structured output costs about 1%.

A request's schema is compiled and checked when the request arrives (an unsupported construct
is a 400 that names it); each constrained row then gets its own matcher in the scheduler's
thread: its mask is applied to that row's logits only, so constrained and unconstrained rows
decode in one batch.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from elmforge.serve.protocol import APIError, bad

# OpenAI's structured output is compact JSON; llguidance would otherwise allow any whitespace
# between tokens, which a weak model can fill until max_tokens.
COMPACT_JSON = {"whitespace_flexible": False}
SHIFTS = torch.arange(32, dtype=torch.int32)  # bit i of a bitmask word: token 32 * word + i


class GrammarCompiler:
    """Compiles ``response_format`` schemas for one tokenizer and makes per-row matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: set[int]) -> None:
        import llguidance.hf

        eos_token = sorted(eos)[0] if eos else None
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_token
        )
        self.vocab_size = vocab_size

    def warm_up(self) -> None:
        """Compute one mask now: llguidance builds its token trie lazily (seconds, once)."""
        self.matcher(self.compile({"type": "object"})).constrain(torch.zeros(self.vocab_size))

    def compile(self, schema: Any) -> str:
        """The grammar for a JSON ``schema``; :class:`APIError` 400 naming what is unsupported."""
        from llguidance import LLMatcher

        if not isinstance(schema, dict):
            raise bad("response_format", "response_format: the JSON schema must be an object")
        schema = {**schema, "x-guidance": {**COMPACT_JSON, **schema.get("x-guidance", {})}}
        try:
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema))
            error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        except (ValueError, TypeError, RuntimeError) as err:
            error = str(err)
        if error:
            raise bad("response_format", f"response_format: unsupported JSON schema: {error}")
        return grammar

    def matcher(self, grammar: str) -> RowGrammar:
        return RowGrammar(self, grammar)


class RowGrammar:
    """One row's constraint: masks its logits, follows the tokens it picks."""

    def __init__(self, compiler: GrammarCompiler, grammar: str) -> None:
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        self.matcher = LLMatcher(compiler.tokenizer, grammar)
        self.bitmask = allocate_token_bitmask(1, compiler.tokenizer.vocab_size)

    def constrain(self, logits: torch.Tensor) -> None:
        """Set the logits (vocab,) of tokens the grammar forbids next to -inf, in place."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        # Unpacked here rather than with llguidance.torch's apply_token_bitmask_inplace, which
        # compiles a kernel with torch.compile on first use (seconds on a CPU).
        words = self.bitmask[0].to(logits.device)
        allowed = ((words[:, None] >> SHIFTS.to(logits.device)) & 1).bool().flatten()
        size = min(logits.shape[-1], allowed.shape[0])
        logits[:size].masked_fill_(~allowed[:size], float("-inf"))
        logits[size:] = float("-inf")  # ids past the tokenizer's vocabulary

    def accept(self, token: int) -> bool:
        """Follow ``token``; True once the grammar is complete (nothing more may follow)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        return self.matcher.is_stopped()


def response_schema(body: dict) -> Any:
    """The JSON schema a request's ``response_format`` asks for, or None (plain text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise bad("response_format", "response_format: expected an object with a type")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise bad(
            "response_format",
            f"response_format.type {kind!r}: expected text, json_object or json_schema",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise bad(
            "response_format",
            "response_format.json_schema: expected an object with a schema object",
        )
    return spec.get("schema", {})


def request_grammar(body: dict, compiler: GrammarCompiler | None) -> str | None:
    """The compiled grammar for ``body``'s response_format (None: plain text)."""
    schema = response_schema(body)
    if schema is None:
        return None
    if compiler is None:
        raise APIError(
            400,
            "response_format: structured output is not available on this server (speculative "
            "decoding decodes through transformers' assisted generation)",
            param="response_format",
        )
    return compiler.compile(schema)
