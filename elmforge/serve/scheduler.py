"""The batching engine behind ``elmforge serve``: continuous batching over a slot cache.

One thread owns the model. Each turn of its loop it (1) admits waiting requests into free slots
of the engine's key/value cache (``serve/engine.py``), starting from the longest prefix of their
prompt already cached (``serve/prefix_cache.py``); (2) prefills prompts: all of them, or with
``prefill_chunk`` at most that many prompt tokens per turn, so a long prompt is read in chunks
between the decode steps of the running rows instead of stalling them; a row whose prompt is
read picks its first token; (3) runs one decode step for every decoding row at once; (4) retires
rows that finished or whose client left, freeing their slots. A request that arrives while
others decode joins at the next turn instead of waiting for the batch to drain.

Each row lives in its own slot, at its own positions from 0, with its own length: it decodes
exactly as it would alone (see ``serve/engine.py``). Joining and leaving moves no other row's
keys and values.

Decoding is bound by reading the weights, so one step for 8 rows costs little more than one for
a single row: that is where the aggregate throughput comes from (``bench/serve.py``).

With speculative decoding (``--prompt-lookup``/``--draft-model``), requests run one at a time
through transformers' assisted generation (``infer.generate.generate_text``), which supports it
at batch 1 only.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from elmforge.infer.detokenize import TextAssembler
from elmforge.infer.generate import SamplingOptions, eos_token_ids, generate_text
from elmforge.serve.engine import SlotEngine
from elmforge.serve.prefix_cache import PrefixCache
from elmforge.serve.settings import DEFAULT_PREFIX_CACHE_MB


class QueueFullError(Exception):
    """More requests are waiting than the queue holds (the server answers 503)."""


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens at this position, best first


@dataclass
class Job:
    """One sequence to generate: a prompt, its options, and (filled in) its results."""

    prompt_ids: list[int]
    options: SamplingOptions  # max_new_tokens already fits the context
    logprobs: int | None = None  # alternatives per generated token; None: no logprobs
    prompt_logprobs: bool = False  # log-probabilities of the prompt tokens too (echo)
    stream: bool = False
    index: int = 0  # the choice's index in the response
    notify: Callable[[str, Job, Any], None] | None = None  # ("delta"|"done", job, payload)
    grammar: Any = None  # a compiled response_format grammar (serve/grammar.py), or None
    adapter: str | None = None  # the per-request adapter (serve/adapters.py); None: the base

    generated: list[int] = field(default_factory=list)
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_token_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    completion_tokens: int = 0
    arrived: float = field(default_factory=time.monotonic)  # for time-to-first-token
    last_token_at: float | None = None  # for inter-token latency

    def cancel(self) -> None:
        """Stop working on this job (its client left); safe from any thread."""
        self.cancelled = True

    def _post(self, kind: str, payload: Any = None) -> None:
        if self.notify is not None:
            self.notify(kind, self, payload)


class _Row:
    """A running job's decoding state."""

    def __init__(
        self, job: Job, tokenizer: Any, eos: set[int], device: str, grammar: Any = None
    ) -> None:
        self.job = job
        self.grammar = grammar  # a serve.grammar.RowGrammar for response_format, or None
        self.assembler = TextAssembler(tokenizer, job.prompt_ids, job.options.stop)
        self.eos = set() if job.options.ignore_eos else eos
        self.processors = job.options.logits_processors()
        self.generator = None
        if not job.options.is_greedy:
            self.generator = torch.Generator(device=device)
            if job.options.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(job.options.seed)
        self.last_token = -1
        self.slot = -1
        self.read = 0  # prompt tokens whose keys and values are in the slot
        self.prompt_logits: list[torch.Tensor] = []  # per chunk, for prompt log-probabilities

    @property
    def decoding(self) -> bool:
        return self.read == len(self.job.prompt_ids)


class Scheduler:
    """Owns the model in one thread; other threads :meth:`submit` jobs and get callbacks."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 16,
        max_queue: int = 256,
        draft_model: Any = None,
        prompt_lookup: int | None = None,
        metrics: Any = None,
        prefill_chunk: int | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        grammars: Any = None,
        adapters: Any = None,
        threads: int | None = None,
    ) -> None:
        self.model = model
        self.threads = threads  # intra-op threads of the model's thread (None: torch's setting)
        self.metrics = metrics  # a serve.metrics.ServeMetrics, or None
        self.grammars = grammars  # a serve.grammar.GrammarCompiler (response_format), or None
        self.tokenizer = tokenizer
        self.device = str(next(model.parameters()).device)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.draft_model = draft_model
        self.prompt_lookup = prompt_lookup
        self.eos = eos_token_ids(model, tokenizer)
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._rows: list[_Row] = []  # rows holding a slot: reading their prompt, or decoding
        self.prefill_chunk = prefill_chunk  # prompt tokens read per turn at most (None: all)
        self.engine: SlotEngine | None = None
        self.prefix_cache: PrefixCache | None = None
        if not self.speculative:
            self.engine = SlotEngine(model, max_batch, adapters=adapters)
            if prefix_cache_mb > 0:
                limit = int(prefix_cache_mb * 2**20)
                self.prefix_cache = PrefixCache(limit, self.engine.bytes_per_token())
        self._free = list(range(max_batch))  # free slots, lowest first
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.generated_tokens = 0
        self.decode_steps = 0

    @property
    def speculative(self) -> bool:
        return self.draft_model is not None or bool(self.prompt_lookup)

    # -- other threads ---------------------------------------------------------------------
    def start(self, warm_up: bool = False) -> None:
        """Start the model's thread (once; later calls do nothing). Every step runs on it, with
        ``threads`` intra-op threads. With ``warm_up``, it first builds the kernels and runs
        each step once, and this returns when that is done (raising what it raised)."""
        if self._thread is not None:
            return
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            if self.threads:
                torch.set_num_threads(self.threads)
            if warm_up:
                try:
                    self.warm_up()
                except BaseException as err:  # handed to the caller, which reports it
                    failed.append(err)
                    ready.set()
                    return
            ready.set()
            self._loop()

        self._thread = threading.Thread(target=run, name="elmforge-scheduler", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread = None
            raise failed[0]

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (all or none); :class:`QueueFullError` when the queue is full."""
        with self._wake:
            # Jobs whose clients left while waiting give their place up now.
            self._waiting = deque(j for j in self._waiting if not self._drop_if_cancelled(j))
            if len(self._waiting) + len(jobs) > self.max_queue:
                raise QueueFullError(
                    f"the server is busy ({len(self._waiting)} requests waiting, queue size "
                    f"{self.max_queue}); retry later"
                )
            self._waiting.extend(jobs)
            self._wake.notify_all()

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self._rows),
            "waiting": sum(not job.cancelled for job in list(self._waiting)),
            "max_batch": self.max_batch,
            "generated_tokens": self.generated_tokens,
            "decode_steps": self.decode_steps,
            "prefix_cache_bytes": self.prefix_cache.bytes if self.prefix_cache else 0,
        }

    def warm_up(self) -> None:
        """Build the kernels and run each step once before serving (the server calls it)."""
        if self.engine is not None:
            self.engine.warm_up()
        if self.grammars is not None:
            self.grammars.warm_up()

    # -- the model's thread ----------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._rows:
                        self._wake.wait()
                    if self._stopping:
                        break
                    room = 1 if self.speculative else self.max_batch - len(self._rows)
                    admitted = [
                        self._waiting.popleft() for _ in range(min(room, len(self._waiting)))
                    ]
                try:
                    self.turn(admitted)
                except Exception as err:  # keep serving: fail what was in flight, log why
                    traceback.print_exc(file=sys.stderr)
                    message = f"generation failed: {type(err).__name__}: {err}"
                    for job in [row.job for row in self._rows] + admitted:
                        if job.finish_reason is None and job.error is None:
                            job.error = message
                            job._post("done")
                    for row in self._rows:
                        self._release(row)
                    self._rows = []

    def turn(self, admitted: list[Job]) -> None:
        """One turn of the loop: ``admitted`` take slots, prompts are read (all, or one chunk's
        worth), then one decode step. (The loop's thread calls it; tests drive it directly,
        under ``inference_mode``.)"""
        admitted = [job for job in admitted if not self._drop_if_cancelled(job)]
        if self.speculative:
            for job in admitted:
                self._run_assisted(job)
            return
        for job in admitted:
            self._admit(job)
        self._read_prompts()
        self._retire()
        if any(row.decoding for row in self._rows):
            self._decode_step()
            self._retire()

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled:
            job.finish_reason = "cancelled"
            job._post("done")
        return job.cancelled

    def _admit(self, job: Job) -> None:
        grammar = None
        if job.grammar is not None:
            grammar = self.grammars.matcher(job.grammar)
        row = _Row(job, self.tokenizer, self.eos, self.device, grammar)
        row.slot = self._free.pop(0)
        if job.adapter is not None:
            self.engine.adapter_of[row.slot] = job.adapter
        self._rows.append(row)

    def _reuse_prefix(self, row: _Row) -> None:
        """Start ``row`` from the longest cached prefix of its prompt (looked up when its prompt
        is first read, so prompts read just before it count)."""
        job = row.job
        if self.prefix_cache is None or job.prompt_logprobs:  # echo scores every prompt token
            return
        found, keys_values = self.prefix_cache.lookup(job.prompt_ids, job.adapter)
        if self.metrics is not None:
            self.metrics.prefix_lookup(len(job.prompt_ids), found)
        if keys_values is not None:
            self.engine.load_prefix(row.slot, keys_values, found)
            row.read = found

    def _release(self, row: _Row) -> None:
        self.engine.release(row.slot)
        self._free.append(row.slot)
        self._free.sort()

    def _read_prompts(self) -> None:
        """Read waiting prompt tokens, oldest row first, at most ``prefill_chunk`` this turn; a
        row whose prompt is read picks its first token and decodes from the next step."""
        budget = self.prefill_chunk or float("inf")
        for row in [row for row in self._rows if not row.decoding]:
            if budget <= 0:
                break
            job = row.job
            if row.read == 0:
                self._reuse_prefix(row)
            count = int(min(budget, len(job.prompt_ids) - row.read))
            tokens = job.prompt_ids[row.read : row.read + count]
            logits = self.engine.prefill(row.slot, tokens, all_logits=job.prompt_logprobs)
            row.read += count
            budget -= count
            if job.prompt_logprobs:
                row.prompt_logits.append(logits)
            if not row.decoding:
                continue
            if job.prompt_logprobs:
                self._score_prompt(job, torch.cat(row.prompt_logits))
                row.prompt_logits = []
            elif self.prefix_cache is not None:
                self.prefix_cache.store(
                    job.prompt_ids,
                    lambda n, slot=row.slot: self.engine.read_prefix(slot, n),
                    job.adapter,
                )
            self._advance([row], logits[-1:])

    def _score_prompt(self, job: Job, logits: torch.Tensor) -> None:
        logprobs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
        targets = torch.tensor(job.prompt_ids[1:], device=logprobs.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        top_n = max(job.logprobs or 0, 1)
        values, indices = logprobs.topk(top_n, dim=-1)
        job.prompt_token_logprobs = [None] + [
            TokenLogprob(token, value, list(zip(top_i, top_v)))
            for token, value, top_i, top_v in zip(
                job.prompt_ids[1:], chosen, indices.tolist(), values.tolist()
            )
        ]

    def _decode_step(self) -> None:
        rows = [row for row in self._rows if row.decoding]
        logits = self.engine.decode({row.slot: row.last_token for row in rows})
        logits = logits[torch.tensor([row.slot for row in rows], device=logits.device)]
        self.decode_steps += 1
        if self.metrics is not None:
            self.metrics.decode_step(len(rows))
        self._advance(rows, logits)

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token from ``logits`` (rows, vocab) and hand out the text."""
        wanted = [i for i, row in enumerate(rows) if row.job.logprobs is not None]
        logprobs = torch.log_softmax(logits[wanted], dim=-1) if wanted else None
        tokens = self._choose(rows, logits)
        for i, (row, token) in enumerate(zip(rows, tokens)):
            job = row.job
            row.last_token = token
            job.generated.append(token)
            self.generated_tokens += 1
            self._timed(job)
            entry = None
            if job.logprobs is not None:
                scores = logprobs[wanted.index(i)]
                values, indices = scores.topk(max(job.logprobs, 1))
                top = list(zip(indices.tolist(), values.tolist()))[: job.logprobs]
                entry = TokenLogprob(token, float(scores[token]), top)
                job.token_logprobs.append(entry)
            complete = row.grammar is not None and row.grammar.accept(token)
            if token in row.eos or (complete and token in self.eos):
                job.finish_reason = "stop"
                piece = row.assembler.finish()
            else:
                piece = row.assembler.push(token)
                if row.assembler.stop_found is not None:
                    job.finish_reason = "stop"
                elif complete:  # the JSON is whole: nothing more may follow
                    job.finish_reason = "stop"
                    piece += row.assembler.finish()
                elif len(job.generated) >= job.options.max_new_tokens:
                    job.finish_reason = "length"
                    piece += row.assembler.finish()
            if job.stream and (piece or entry is not None):
                job._post("delta", (piece, entry))

    def _timed(self, job: Job) -> None:
        now = time.monotonic()
        if self.metrics is not None:
            if job.last_token_at is None:
                self.metrics.first_token(job.arrived, now)
            else:
                self.metrics.next_token(job.last_token_at, now)
        job.last_token_at = now

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        for i, row in enumerate(rows):  # vLLM's min_tokens: no end-of-sequence before it
            if len(row.job.generated) < row.job.options.min_new_tokens and row.eos:
                logits[i, sorted(row.eos)] = float("-inf")
            if row.grammar is not None:
                row.grammar.constrain(logits[i])
        if all(row.generator is None and not row.processors for row in rows):
            return logits.argmax(-1).tolist()
        tokens = []
        for i, row in enumerate(rows):
            scores = logits[i : i + 1]
            if row.processors:
                history = torch.tensor([row.job.prompt_ids + row.job.generated], device=self.device)
                scores = row.processors(history, scores)
            if row.generator is None:
                tokens.append(int(scores.argmax(-1)))
            else:
                probs = torch.softmax(scores, dim=-1)
                tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return tokens

    def _retire(self) -> None:
        """Drop finished and cancelled rows from the batch; their slots are free again."""
        keep = []
        for row in self._rows:
            job = row.job
            if job.finish_reason is None and job.cancelled:
                job.finish_reason = "cancelled"
            if job.finish_reason is None:
                keep.append(row)
                continue
            self._release(row)
            job.text = row.assembler.text
            job.completion_tokens = len(job.generated)
            job._post("done")
        self._rows = keep

    def _run_assisted(self, job: Job) -> None:
        """One request through transformers' assisted generation (speculative, batch 1)."""
        options = replace(
            job.options, prompt_lookup=self.prompt_lookup, draft_model=self.draft_model
        )

        def on_text(piece: str) -> None:
            self._timed(job)  # per piece of text: assisted generation hands out no tokens
            if job.stream:
                job._post("delta", (piece, None))

        result = generate_text(
            self.model,
            self.tokenizer,
            job.prompt_ids,
            options,
            on_text=on_text,
            should_stop=lambda: job.cancelled,
        )
        job.text = result.text
        job.completion_tokens = result.completion_tokens
        self.generated_tokens += result.completion_tokens
        job.finish_reason = "cancelled" if job.cancelled else result.finish_reason
        job._post("done")
