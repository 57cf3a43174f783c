"""OpenAI's response and stream-chunk shapes for completions and chat completions."""

from __future__ import annotations

import time
import uuid
from typing import Any

from elmforge.serve.protocol import Plan
from elmforge.serve.scheduler import Job, TokenLogprob


class ResponseFormat:
    """Builds the JSON objects of one request's answer (both endpoints share the bookkeeping)."""

    object_name = ""
    chunk_object_name = ""
    id_prefix = ""

    def __init__(self, plan: Plan, jobs: list[Job], model_name: str, tokenizer: Any) -> None:
        self.plan, self.jobs, self.model_name, self.tokenizer = plan, jobs, model_name, tokenizer
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._token_text: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (special tokens included, e.g. ``</s>``)."""
        if token_id not in self._token_text:
            self._token_text[token_id] = self.tokenizer.decode([token_id])
        return self._token_text[token_id]

    def usage(self) -> dict[str, int]:
        prompt = sum(len(job.prompt_ids) for job in self.jobs)
        completion = sum(job.completion_tokens for job in self.jobs)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def envelope(self, choices: list[dict], chunk: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object_name if chunk else self.object_name,
            "created": self.created,
            "model": self.model_name,
            "choices": choices,
        }

    def response(self) -> dict[str, Any]:
        body = self.envelope([self.choice(job) for job in self.jobs], chunk=False)
        body["usage"] = self.usage()
        return body

    def usage_chunk(self) -> dict[str, Any]:
        body = self.envelope([], chunk=True)
        body["usage"] = self.usage()
        return body

    def chunk(self, job: Job, **choice: Any) -> dict[str, Any]:
        body = self.envelope([{"index": job.index, **choice}], chunk=True)
        if self.plan.include_usage:
            body["usage"] = None
        return body

    # Endpoint-specific parts.
    def choice(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def first_chunk(self, job: Job) -> dict[str, Any] | None:
        """What a stream sends for ``job`` before its first token (sent once its prompt has
        been processed, so echoed prompt log-probabilities are known)."""
        return None

    def delta_chunk(self, job: Job, piece: str, entry: TokenLogprob | None) -> dict[str, Any]:
        raise NotImplementedError

    def final_chunk(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError


class CompletionFormat(ResponseFormat):
    object_name = chunk_object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._offsets = {job.index: 0 for job in self.jobs}

    def prompt_text(self, job: Job) -> str:
        given = self.plan.prompt_texts[job.index]
        return given if given is not None else self.tokenizer.decode(job.prompt_ids)

    def logprobs_block(self, entries: list[TokenLogprob | None], job: Job) -> dict[str, Any]:
        block: dict[str, list] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for position, entry in enumerate(entries):
            if entry is None:  # the first prompt token has no prediction
                token_id = job.prompt_ids[position]
                block["token_logprobs"].append(None)
                block["top_logprobs"].append(None)
            else:
                token_id = entry.token_id
                block["token_logprobs"].append(entry.logprob)
                block["top_logprobs"].append({self.token_text(i): value for i, value in entry.top})
            text = self.token_text(token_id)
            block["tokens"].append(text)
            block["text_offset"].append(self._offsets[job.index])
            self._offsets[job.index] += len(text)
        return block

    def choice(self, job: Job) -> dict[str, Any]:
        text = job.text
        logprobs = None
        if self.plan.logprobs is not None:
            entries = list(job.prompt_token_logprobs) if self.plan.echo else []
            logprobs = self.logprobs_block(entries + job.token_logprobs, job)
        if self.plan.echo:
            text = self.prompt_text(job) + text
        return {
            "index": job.index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": job.finish_reason,
        }

    def first_chunk(self, job: Job) -> dict[str, Any] | None:
        if not self.plan.echo:
            return None
        logprobs = None
        if self.plan.logprobs is not None:
            logprobs = self.logprobs_block(job.prompt_token_logprobs, job)
        return self.chunk(job, text=self.prompt_text(job), logprobs=logprobs, finish_reason=None)

    def delta_chunk(self, job: Job, piece: str, entry: TokenLogprob | None) -> dict[str, Any]:
        logprobs = self.logprobs_block([entry], job) if entry is not None else None
        return self.chunk(job, text=piece, logprobs=logprobs, finish_reason=None)

    def final_chunk(self, job: Job) -> dict[str, Any]:
        return self.chunk(job, text="", logprobs=None, finish_reason=job.finish_reason)


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def content_entry(self, entry: TokenLogprob) -> dict[str, Any]:
        def item(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            **item(entry.token_id, entry.logprob),
            "top_logprobs": [item(i, value) for i, value in entry.top],
        }

    def choice(self, job: Job) -> dict[str, Any]:
        logprobs = None
        if self.plan.logprobs is not None:
            logprobs = {"content": [self.content_entry(e) for e in job.token_logprobs]}
        return {
            "index": job.index,
            "message": {"role": "assistant", "content": job.text},
            "logprobs": logprobs,
            "finish_reason": job.finish_reason,
        }

    def first_chunk(self, job: Job) -> dict[str, Any] | None:
        return self.chunk(
            job, delta={"role": "assistant", "content": ""}, logprobs=None, finish_reason=None
        )

    def delta_chunk(self, job: Job, piece: str, entry: TokenLogprob | None) -> dict[str, Any]:
        logprobs = {"content": [self.content_entry(entry)]} if entry is not None else None
        return self.chunk(job, delta={"content": piece}, logprobs=logprobs, finish_reason=None)

    def final_chunk(self, job: Job) -> dict[str, Any]:
        return self.chunk(job, delta={}, logprobs=None, finish_reason=job.finish_reason)
