"""Structured output through llguidance: OpenAI's ``response_format`` (``json_object``,
``json_schema``) and vLLM's extension fields for what JSON cannot say: ``guided_regex`` (a
regular expression), ``guided_choice`` (one of a list of strings), ``guided_grammar`` (a context-
free grammar in llguidance's Lark syntax) and ``guided_json``, or the same four as the keys
``regex``, ``choice``, ``grammar``, ``json`` of one ``structured_outputs`` object (vLLM's newer
spelling). One constraint per request.

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

from elmforge.serve.protocol import GUIDED_FIELDS, STRUCTURED_KINDS, APIError, bad

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

    def compile(self, schema: Any, field: str = "response_format") -> str:
        """The grammar for a JSON ``schema``; :class:`APIError` 400 naming what is unsupported."""
        from llguidance import LLMatcher

        if not isinstance(schema, dict):
            raise bad(field, f"{field}: the JSON schema must be an object")
        schema = {**schema, "x-guidance": {**COMPACT_JSON, **schema.get("x-guidance", {})}}
        return self._checked(field, "JSON schema",
                             lambda: LLMatcher.grammar_from_json_schema(json.dumps(schema)))  # fmt: skip

    def compile_constraint(self, constraint: Constraint) -> str:
        """The grammar for any :class:`Constraint` a request carries."""
        from llguidance import LLMatcher

        kind, spec, field = constraint
        if kind == "json":
            return self.compile(spec, field)
        if kind == "regex":
            return self._checked(field, "regular expression",
                                 lambda: LLMatcher.grammar_from_regex(spec))  # fmt: skip
        if kind == "choice":
            lark = "start: " + " | ".join(json.dumps(choice) for choice in spec)
            return self._checked(field, "choice", lambda: LLMatcher.grammar_from_lark(lark))
        return self._checked(field, "grammar", lambda: LLMatcher.grammar_from_lark(spec))

    def _checked(self, field: str, what: str, build: Any) -> str:
        from llguidance import LLMatcher

        try:
            grammar = build()
            error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        except (ValueError, TypeError, RuntimeError) as err:
            error = str(err)
        if error:
            raise bad(field, f"{field}: unsupported {what}: {error}")
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


# (kind: json/regex/choice/grammar, its specification, the request field that gave it)
Constraint = tuple[str, Any, str]


def _checked_spec(kind: str, spec: Any, field: str) -> Constraint:
    """``spec`` in the type its kind needs (a guided_json string is parsed)."""
    if kind == "json" and isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise bad(field, f"{field}: not valid JSON ({err.msg} at {err.pos})") from None
    if kind == "json" and not isinstance(spec, dict):
        raise bad(field, f"{field}: expected a JSON schema object")
    if kind in ("regex", "grammar") and not (isinstance(spec, str) and spec):
        raise bad(field, f"{field}: expected a non-empty string")
    if kind == "choice" and not (
        isinstance(spec, list) and spec and all(isinstance(c, str) and c for c in spec)
    ):
        raise bad(field, f"{field}: expected a list of non-empty strings")
    return kind, spec, field


def request_constraint(body: dict) -> Constraint | None:
    """The one output constraint ``body`` asks for, checked, or None (plain text)."""
    found: list[Constraint] = []
    schema = response_schema(body)
    if schema is not None:
        found.append(("json", schema, "response_format"))
    for name in GUIDED_FIELDS:
        if body.get(name) is not None:
            found.append(_checked_spec(name.removeprefix("guided_"), body[name], name))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        keys = [k for k in STRUCTURED_KINDS if isinstance(outputs, dict) and k in outputs]
        if not isinstance(outputs, dict) or len(keys) != 1 or set(outputs) - set(keys):
            raise bad("structured_outputs", "structured_outputs: expected an object with one of "
                      f"{', '.join(STRUCTURED_KINDS)}")  # fmt: skip
        key = keys[0]
        found.append(_checked_spec(key, outputs[key], f"structured_outputs.{key}"))
    if len(found) > 1:
        raise bad(found[1][2], f"{found[1][2]}: only one output constraint per request (also "
                  f"{found[0][2]})")  # fmt: skip
    return found[0] if found else None


def request_grammar(body: dict, compiler: GrammarCompiler | None) -> str | None:
    """The compiled grammar for ``body``'s output constraint (None: plain text)."""
    constraint = request_constraint(body)
    if constraint is None:
        return None
    if compiler is None:
        field = constraint[2]
        raise APIError(
            400,
            f"{field}: structured output is not available on this server (speculative "
            "decoding decodes through transformers' assisted generation)",
            param=field,
        )
    return compiler.compile_constraint(constraint)
