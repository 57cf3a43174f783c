"""The slot engine under the scheduler, driven turn by turn in-process: batches of 1 to 8 rows
joining and leaving at different steps decode exactly what `elmforge generate` (generate_text)
does, with and without prefix-cache hits and chunked prefill; the prefix cache stays under its
memory bound; a long prompt read in chunks never stalls running streams."""

from __future__ import annotations

import pytest
import torch

from elmforge.infer.generate import SamplingOptions, generate_text
from elmforge.serve.metrics import ServeMetrics
from elmforge.serve.prefix_cache import PrefixCache
from elmforge.serve.scheduler import Job, Scheduler
from tests.model.helpers import make_model
from tests.serve import test_scheduler
from tests.serve.test_scheduler import VOCAB, greedy_job, run_turns

tokenizer = test_scheduler.tokenizer  # the same tiny tokenizer (a module fixture)


@pytest.fixture(scope="module")
def model():
    return make_model("scaled-3-layers", vocab_size=VOCAB, max_context_length=2048,
                      rope_max_length=2048)  # fmt: skip


def generate_alone(model, tokenizer, prompt: list[int], tokens: int) -> str:
    options = SamplingOptions(max_new_tokens=tokens, greedy=True, ignore_eos=True)
    return generate_text(model, tokenizer, prompt, options).text


def staggered_jobs() -> tuple[list[list[int]], list[int], dict[int, list[int]]]:
    """Eight prompts, several sharing a prefix (a "system prompt") or repeating one, arriving
    at five different turns and finishing at different steps."""
    torch.manual_seed(3)
    system = torch.randint(4, VOCAB, (20,)).tolist()
    own = [torch.randint(4, VOCAB, (n,)).tolist() for n in (3, 11, 6, 17, 1, 9, 2, 5)]
    prompts = [system + own[0], own[1], system + own[2], own[3], system + own[4], own[5],
               system + own[0], own[1] + own[7]]  # fmt: skip
    lengths = [12, 5, 9, 7, 14, 3, 10, 6]
    arrivals = {0: [0], 1: [1, 2], 3: [3], 4: [4, 5, 6], 7: [7]}
    return prompts, lengths, arrivals


@pytest.mark.parametrize("prefix_cache_mb", [0, 64], ids=["no-prefix-cache", "prefix-cache"])
@pytest.mark.parametrize("prefill_chunk", [None, 4], ids=["whole-prompts", "chunks-of-4"])
def test_rows_joining_and_leaving_equal_elmforge_generate(
    model, tokenizer, prefix_cache_mb, prefill_chunk
):
    prompts, lengths, arrivals = staggered_jobs()
    jobs = [greedy_job(p, n) for p, n in zip(prompts, lengths)]
    metrics = ServeMetrics()
    scheduler = Scheduler(model, tokenizer, max_batch=8, metrics=metrics,
                          prefix_cache_mb=prefix_cache_mb, prefill_chunk=prefill_chunk)  # fmt: skip
    sizes = run_turns(scheduler, {t: [jobs[i] for i in ids] for t, ids in arrivals.items()})
    assert len(set(sizes)) >= 4 and sizes[-1] == 0  # the batch grew and shrank
    for job, prompt, n in zip(jobs, prompts, lengths):
        assert job.text == generate_alone(model, tokenizer, prompt, n)
        assert (job.finish_reason, len(job.generated)) == ("length", n)
    hits = metrics.prefix_cache_hits._value.get()
    if prefix_cache_mb:
        assert hits >= 3 * 20  # the shared prefix, found for later requests
        assert 0 < scheduler.stats()["prefix_cache_bytes"] <= prefix_cache_mb * 2**20
    else:
        assert hits == 0


def test_a_repeated_prompt_reads_one_token_and_answers_the_same(model, tokenizer):
    prompt = torch.randint(4, VOCAB, (60,)).tolist()
    scheduler = Scheduler(model, tokenizer, max_batch=2)
    read = []
    prefill = scheduler.engine.prefill
    scheduler.engine.prefill = lambda slot, tokens, **kw: (
        read.append(len(tokens)) or prefill(slot, tokens, **kw)
    )
    first, again = greedy_job(prompt, 6), greedy_job(prompt, 6)
    run_turns(scheduler, {0: [first]})
    run_turns(scheduler, {0: [again]})
    assert read == [60, 1]
    assert again.generated == first.generated
    assert first.text == generate_alone(model, tokenizer, prompt, 6)


def test_the_prefix_cache_evicts_the_least_recently_used():
    def entry(length: int):
        return [(torch.zeros(1, length, 2), torch.zeros(1, length, 2))]

    cache = PrefixCache(max_bytes=100, bytes_per_token=10)
    cache.store([1, 2, 3, 4], entry)
    cache.store([5, 6, 7], entry)
    assert cache.lookup([1, 2, 3, 9])[0] == 3  # also marks [1, 2, 3, 4] recently used
    cache.store([8, 9, 10, 11], entry)  # 110 bytes: [5, 6, 7] goes
    assert cache.lookup([5, 6, 7, 1])[0] == 0
    assert cache.lookup([1, 2, 3, 4])[0] == 3  # never the whole prompt: its last token is read
    assert cache.bytes == 80 and len(cache) == 2
    cache.store(list(range(20)), entry)  # larger than the whole cache: not kept
    assert len(cache) == 2


def test_a_long_prompt_read_in_chunks_never_stalls_running_streams(model, tokenizer):
    chunk = 256
    scheduler = Scheduler(model, tokenizer, max_batch=8, prefill_chunk=chunk)
    events: list[tuple[str, int]] = []
    prefill, decode = scheduler.engine.prefill, scheduler.engine.decode

    def counted_prefill(slot, tokens, **kw):
        events.append(("prefill", len(tokens)))
        return prefill(slot, tokens, **kw)

    def counted_decode(tokens):
        events.append(("decode", len(tokens)))
        return decode(tokens)

    scheduler.engine.prefill, scheduler.engine.decode = counted_prefill, counted_decode
    streams = [greedy_job(torch.randint(4, VOCAB, (8,)).tolist(), 40) for _ in range(4)]
    long_prompt = torch.randint(4, VOCAB, (1500,)).tolist()
    long = greedy_job(long_prompt, 4)
    run_turns(scheduler, {0: streams, 3: [long]})
    arrived = events.index(("prefill", chunk))
    between = 0  # prompt tokens read since the last decode step
    chunks_read = 0
    for kind, count in events[arrived:]:
        if kind == "decode":
            between = 0
            continue
        between += count
        chunks_read += 1
        assert between <= chunk  # at most one chunk between two decode steps
    assert chunks_read == -(-1500 // chunk)
    # While the long prompt is read, the four streams decode every step: one token each.
    during = [count for kind, count in events[arrived:] if kind == "decode"][: chunks_read - 1]
    assert during == [4] * (chunks_read - 1)
    for job in [*streams, long]:
        assert job.text == generate_alone(model, tokenizer, job.prompt_ids, len(job.generated))


def test_prompt_logprobs_rows_are_read_in_chunks_too(model, tokenizer):
    prompt = torch.randint(4, VOCAB, (30,)).tolist()
    whole, chunked = greedy_job(prompt, 3), greedy_job(prompt, 3)
    for job in (whole, chunked):
        job.prompt_logprobs, job.logprobs = True, 2
    run_turns(Scheduler(model, tokenizer), {0: [whole]})
    run_turns(Scheduler(model, tokenizer, prefill_chunk=7), {0: [chunked]})
    assert chunked.generated == whole.generated
    for a, b in zip(whole.prompt_token_logprobs[1:], chunked.prompt_token_logprobs[1:]):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_a_job_cancelled_while_its_prompt_is_read_frees_its_slot(model, tokenizer):
    scheduler = Scheduler(model, tokenizer, max_batch=2, prefill_chunk=8)
    job = Job(torch.randint(4, VOCAB, (50,)).tolist(), SamplingOptions(max_new_tokens=4))
    run_turns(scheduler, {0: [job]}, until_idle=False)
    assert scheduler.stats()["running"] == 1
    job.cancel()
    run_turns(scheduler, {0: []})
    assert job.finish_reason == "cancelled" and scheduler.stats()["running"] == 0
    assert sorted(scheduler._free) == [0, 1]
