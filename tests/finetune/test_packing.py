"""SFT packing: several examples per sequence, positions restarting per example, attention kept
inside each example. On a fixed batch the packed loss equals the unpacked one (relative 1e-5,
fp32), each example's logits equal its logits alone (absolute 1e-5), and changing one example
leaves the others' logits unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.tasks import ExampleLoader, make_batch, make_packed_batch
from elmforge.finetune.tokenize import TokenRow
from elmforge.finetune.trainer import FinetuneJob, finetune
from elmforge.model.modeling import OpenELMForCausalLM
from elmforge.train.distributed import DistEnv
from elmforge.train.optim import loss_sums
from tests.finetune.conftest import instruction_rows, write_json
from tests.shapes import micro_config

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _example(seed: int, length: int) -> TokenRow:
    ids = torch.randint(3, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    return TokenRow(ids, [False] * 4 + [True] * (length - 4))


def _model() -> OpenELMForCausalLM:
    torch.manual_seed(0)
    return OpenELMForCausalLM(micro_config(vocab_size=256)).eval()


def _logits(model, batch) -> torch.Tensor:
    extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], use_cache=False, **extra).logits


def test_packed_loss_and_logits_equal_the_unpacked_ones() -> None:
    model = _model()
    examples = [_example(i, n) for i, n in enumerate([9, 15, 7, 12])]
    packed = make_packed_batch([examples[:3], examples[3:]], 0)
    unpacked = make_batch(examples, 0)
    ce_packed, _ = loss_sums(_logits(model, packed), packed["labels"])
    ce_plain, _ = loss_sums(_logits(model, unpacked), unpacked["labels"])
    assert (packed["labels"] != -100).sum() == (unpacked["labels"] != -100).sum()
    torch.testing.assert_close(ce_packed, ce_plain, rtol=1e-5, atol=0)
    # Each example's logits, packed, are its logits alone.
    logits = _logits(model, packed)
    start = 0
    for example in examples[:3]:
        alone = _logits(model, make_batch([example], 0))[0]
        width = len(example.ids) - 1
        torch.testing.assert_close(logits[0, start : start + width], alone, rtol=0, atol=1e-5)
        start += width


def test_changing_one_example_leaves_the_others_logits_unchanged() -> None:
    model = _model()
    a, b, c = _example(1, 10), _example(2, 13), _example(3, 8)
    before = _logits(model, make_packed_batch([[a, b, c]], 0))[0]
    after = _logits(model, make_packed_batch([[a, _example(99, 13), c]], 0))[0]
    wa, wb = len(a.ids) - 1, len(b.ids) - 1
    torch.testing.assert_close(after[:wa], before[:wa], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[wa + wb :], before[wa + wb :], rtol=0, atol=1e-6)
    assert not torch.allclose(after[wa : wa + wb], before[wa : wa + wb])


def test_packed_rows_fill_up_to_the_length_and_resume_exactly() -> None:
    examples = [_example(i, 6 + i % 5) for i in range(20)]
    loader = ExampleLoader(examples, 0, 2, ENV, 0, pack_length=24)
    first = next(loader)
    assert first["input_ids"].shape[1] <= 24 and first["attention_mask"].shape[-1] <= 24
    state = loader.state_dict()
    expected = [next(loader)["input_ids"] for _ in range(5)]
    again = ExampleLoader(examples, 0, 2, ENV, 0, pack_length=24)
    again.load_state_dict(state)
    assert all(torch.equal(next(again)["input_ids"], e) for e in expected)


def test_a_packed_sft_run(tmp_path: Path, base_model_dir: Path) -> None:
    data = write_json(tmp_path / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, ["data.packing=true", "data.max_length=96",
                                        "data.max_prompt_length=48", "schedule.max_steps=3",
                                        "train.micro_batch_size=2", "log.progress=none",
                                        "train.num_threads=1", "optim.lr=3e-3"])  # fmt: skip
    final = finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, tmp_path / "run")
    assert (final / "model.safetensors").is_file()
