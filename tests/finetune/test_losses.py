"""The losses: textbook formulas on fixed log-probs, TRL 1.16's trainers as the oracle on real
batches of a real model, and the SFT mask."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from elmforge.finetune.data import PreferenceRow, SFTRow
from elmforge.finetune.losses import dpo_loss, reward_metrics, sequence_logps
from elmforge.finetune.tokenize import IGNORE_INDEX, collate, encode_preferences, encode_sft
from elmforge.train.optim import loss_sums
from tests.finetune.conftest import preference_rows
from tests.shapes import micro_config

# log pi(chosen), log pi(rejected), log ref(chosen), log ref(rejected) for three pairs.
POLICY_CHOSEN = torch.tensor([-10.0, -20.0, -5.0])
POLICY_REJECTED = torch.tensor([-12.0, -18.0, -5.0])
REF_CHOSEN = torch.tensor([-11.0, -19.0, -6.0])
REF_REJECTED = torch.tensor([-11.0, -19.0, -4.0])


@pytest.mark.parametrize("beta", [0.01, 0.5])
def test_dpo_losses_are_the_textbook_formulas(beta: float) -> None:
    # delta = (pc - rc) - (pr - rr): [1 - (-1), -1 - 1, 1 - (-1)] = [2, -2, 2]
    deltas = [2.0, -2.0, 2.0]
    sigmoid = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta, "sigmoid")
    hinge = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta, "hinge")
    for i, delta in enumerate(deltas):
        assert sigmoid.losses[i].item() == pytest.approx(math.log1p(math.exp(-beta * delta)))
        assert hinge.losses[i].item() == pytest.approx(max(0.0, 1 - beta * delta))
    metrics = reward_metrics(sigmoid)
    assert metrics["rewards/chosen"] == pytest.approx(beta * (1 - 1 + 1) / 3)
    assert metrics["rewards/margins"] == pytest.approx(beta * 2 / 3)
    assert metrics["rewards/accuracies"] == pytest.approx(2 / 3)


def test_sequence_logps_sum_the_labelled_tokens() -> None:
    logits = torch.randn(2, 4, 11)
    labels = torch.tensor([[3, IGNORE_INDEX, 5, 1], [IGNORE_INDEX] * 3 + [7]])
    logps = F.log_softmax(logits, dim=-1)
    expected = [logps[0, 0, 3] + logps[0, 2, 5] + logps[0, 3, 1], logps[1, 3, 7]]
    assert torch.allclose(sequence_logps(logits, labels), torch.stack(expected))


def _micro(tokenizer, seed: int):
    from elmforge.model.modeling import OpenELMForCausalLM

    torch.manual_seed(seed)
    config = micro_config(vocab_size=-(-len(tokenizer) // 64) * 64)
    return OpenELMForCausalLM(config)


def _trl_labels(batch) -> torch.Tensor:
    """TRL's (input_ids, completion_mask) as our shifted labels."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    return torch.where(mask[:, 1:].bool(), ids[:, 1:], IGNORE_INDEX)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_dpo_equals_trls_trainer_on_the_same_batch(
    bpe_tokenizer, tmp_path: Path, loss_type
) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    reference = _micro(bpe_tokenizer, 0)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that has moved away from its reference
        for param in policy.parameters():
            param.add_(0.02 * torch.randn_like(param))
    rows = preference_rows()[:4]
    args = DPOConfig(output_dir=str(tmp_path), beta=0.1, loss_type=[loss_type], report_to=[],
                     bf16=False, use_cpu=True, gradient_checkpointing=False,
                     per_device_train_batch_size=4)  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=bpe_tokenizer)  # fmt: skip
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(examples)
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # Our tokenisation of the same text rows gives TRL's sequences (TRL adds bos to text rows).
    pairs = [PreferenceRow("r", r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    ours, _ = encode_preferences(pairs, bpe_tokenizer, 1024, 512)
    for (chosen, rejected), example in zip(ours, examples):
        assert chosen.ids == example["prompt_ids"] + example["chosen_ids"]
        assert rejected.ids == example["prompt_ids"] + example["rejected_ids"]

    labels = _trl_labels(batch)
    with torch.no_grad():
        inputs = batch["input_ids"][:, :-1]
        policy_logps = sequence_logps(policy.eval()(input_ids=inputs).logits, labels)
        reference_logps = sequence_logps(reference.eval()(input_ids=inputs).logits, labels)
    terms = dpo_loss(policy_logps[:4], policy_logps[4:], reference_logps[:4], reference_logps[4:],
                     0.1, loss_type)  # fmt: skip
    assert terms.losses.mean().item() == pytest.approx(trl_loss, rel=1e-5, abs=1e-6)
    for key, value in reward_metrics(terms).items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_sft_loss_equals_trls_trainer_and_ignores_the_prompt(bpe_tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = _micro(bpe_tokenizer, 1)
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in preference_rows()[:4]]
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True,
                     gradient_checkpointing=False, per_device_train_batch_size=4)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=bpe_tokenizer)  # fmt: skip
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples)).item()

    sft_rows = [SFTRow("r", prompt=r["prompt"], completion=r["completion"]) for r in rows]
    sequences, _ = encode_sft(sft_rows, bpe_tokenizer, 1024, 512)
    for seq, example in zip(sequences, examples):
        assert seq.ids == example["input_ids"]
        assert [t if f else IGNORE_INDEX for t, f in zip(seq.ids, seq.trained)] == example["labels"]
    batch = collate(sequences, pad_id=0)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    ce_sum, _ = loss_sums(logits, batch["labels"])
    targets = int((batch["labels"] != IGNORE_INDEX).sum())
    assert (ce_sum / targets).item() == pytest.approx(trl_loss, rel=1e-5)

    # The mask is what makes it so: the mean cross-entropy over the completion tokens alone,
    # computed here from scratch, is the loss; over every token it is not.
    completion, everything = [], []
    for row, seq in enumerate(sequences):
        logps = F.log_softmax(logits[row], dim=-1)
        for j in range(len(seq.ids) - 1):
            nll = -logps[j, seq.ids[j + 1]].item()
            everything.append(nll)
            if seq.trained[j + 1]:
                completion.append(nll)
    assert (ce_sum / targets).item() == pytest.approx(sum(completion) / len(completion), rel=1e-5)
    assert abs(sum(everything) / len(everything) - trl_loss) > 1e-3
