"""The batching engine, driven turn by turn in-process: rows that join, leave and pad decode
exactly as they would alone, prompt log-probabilities are the model's own, cancelled rows leave."""

from __future__ import annotations

import pytest
import torch

from elmforge.data.tokenizer import train_bpe_tokenizer
from elmforge.infer.generate import SamplingOptions
from elmforge.serve.scheduler import Job, QueueFullError, Scheduler
from tests.model.helpers import greedy_without_cache, make_model

VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"the {w} sat on the {v} mat." for w in ("cat", "dog", "bird") for v in "abc"]
    return train_bpe_tokenizer(corpus * 20, VOCAB)


@pytest.fixture(scope="module")
def model():
    # Layer-wise scaled: kv-head counts differ per layer, so cache merging is per layer.
    return make_model("scaled-3-layers", vocab_size=VOCAB)


def greedy_job(prompt: list[int], tokens: int, **options) -> Job:
    return Job(
        prompt_ids=prompt,
        options=SamplingOptions(max_new_tokens=tokens, greedy=True, ignore_eos=True, **options),
    )


def run_turns(scheduler: Scheduler, arrivals: dict[int, list[Job]], until_idle: bool = True):
    """Turn ``t`` admits ``arrivals[t]``; returns the batch sizes seen after each turn."""
    sizes = []
    turn = 0
    with torch.inference_mode():
        while turn <= max(arrivals) or (until_idle and scheduler.stats()["running"]):
            scheduler.turn(arrivals.get(turn, []))
            sizes.append(scheduler.stats()["running"])
            turn += 1
    return sizes


def test_rows_joining_and_leaving_decode_like_single_sequences(model, tokenizer):
    torch.manual_seed(1)
    prompts = [torch.randint(4, VOCAB, (n,)).tolist() for n in (3, 11, 6, 17)]
    lengths = [12, 5, 9, 7]
    jobs = [greedy_job(p, n) for p, n in zip(prompts, lengths)]
    scheduler = Scheduler(model, tokenizer, max_batch=8)
    # Staggered arrivals: a long prompt joins a short one mid-decode, rows finish at different
    # steps, so the cache is padded, merged, selected and trimmed along the way.
    sizes = run_turns(scheduler, {0: [jobs[0]], 2: [jobs[1], jobs[2]], 4: [jobs[3]]})
    assert max(sizes) == 4 and sizes[-1] == 0
    for job, prompt, n in zip(jobs, prompts, lengths):
        expected = greedy_without_cache(model, torch.tensor([prompt]), n)[0, len(prompt) :]
        assert job.generated == expected.tolist()
        assert (job.finish_reason, job.completion_tokens) == ("length", n)


def test_prompt_logprobs_are_the_models_log_softmax(model, tokenizer):
    prompt = torch.randint(4, VOCAB, (10,)).tolist()
    job = greedy_job(prompt, 2)
    job.prompt_logprobs, job.logprobs = True, 3
    run_turns(Scheduler(model, tokenizer), {0: [job]})
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, -1)
    assert job.prompt_token_logprobs[0] is None
    for t, entry in enumerate(job.prompt_token_logprobs[1:], start=1):
        assert entry.token_id == prompt[t]
        assert entry.logprob == pytest.approx(expected[t - 1, prompt[t]].item(), abs=1e-5)
        assert len(entry.top) == 3
        assert entry.top[0][1] == pytest.approx(expected[t - 1].max().item(), abs=1e-5)
    first = job.token_logprobs[0]
    assert first.token_id == int(expected[-1].argmax())
    assert first.logprob == pytest.approx(expected[-1].max().item(), abs=1e-5)


def test_cancelled_row_leaves_the_batch_and_others_continue(model, tokenizer):
    keep, drop = greedy_job([5, 6, 7], 10), greedy_job([8, 9], 50)
    scheduler = Scheduler(model, tokenizer)
    run_turns(scheduler, {0: [keep, drop]}, until_idle=False)
    drop.cancel()
    run_turns(scheduler, {0: []})
    assert drop.finish_reason == "cancelled" and len(drop.generated) < 5
    expected = greedy_without_cache(model, torch.tensor([[5, 6, 7]]), 10)[0, 3:]
    assert keep.generated == expected.tolist()


def test_seeded_sampling_does_not_depend_on_batch_companions(model, tokenizer):
    def sampled() -> Job:
        options = SamplingOptions(
            max_new_tokens=8, temperature=0.9, top_k=40, top_p=0.9, seed=7, ignore_eos=True
        )
        return Job(prompt_ids=[4, 5, 6], options=options)

    alone, together = sampled(), sampled()
    run_turns(Scheduler(model, tokenizer), {0: [alone]})
    run_turns(Scheduler(model, tokenizer), {0: [greedy_job([9] * 7, 8), together]})
    assert alone.generated == together.generated


def test_min_tokens_blocks_end_of_sequence(model, tokenizer):
    prompt = [4, 5, 6]
    with torch.no_grad():
        first = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first  # the greedy first token ends the sequence
    try:
        plain = Job(prompt, SamplingOptions(max_new_tokens=6, greedy=True))
        held = Job(prompt, SamplingOptions(max_new_tokens=6, greedy=True, min_new_tokens=3))
        run_turns(Scheduler(model, tokenizer), {0: [plain]})
        run_turns(Scheduler(model, tokenizer), {0: [held]})
    finally:
        model.generation_config.eos_token_id = None
    assert (plain.generated, plain.finish_reason) == ([first], "stop")
    assert first not in held.generated[:3] and len(held.generated) >= 4


def test_a_full_queue_refuses_new_jobs(model, tokenizer):
    scheduler = Scheduler(model, tokenizer, max_queue=2)
    scheduler.submit([greedy_job([4], 2), greedy_job([5], 2)])
    with pytest.raises(QueueFullError, match="queue size 2"):
        scheduler.submit([greedy_job([6], 2)])


def test_a_job_cancelled_while_waiting_gives_its_place_up(model, tokenizer):
    scheduler = Scheduler(model, tokenizer, max_queue=1)
    left = greedy_job([4], 2)
    scheduler.submit([left])
    left.cancel()
    assert scheduler.stats()["waiting"] == 0
    scheduler.submit([greedy_job([5], 2)])
    assert left.finish_reason == "cancelled"
