"""The pipeline: filters, packing and padding, exact resumption, sharding, bad input."""

from __future__ import annotations

import functools
import json
import re
import unicodedata

import pytest
import torch

from elmforge.data.config import DataConfig
from elmforge.data.documents import DocumentProcessor, processed_length
from elmforge.data.inspect import inspect
from elmforge.data.loader import build_train_loader, unshifted_labels
from elmforge.errors import ConfigError, DataError
from tests.data.conftest import data_config, document, write_jsonl, write_parquet


def take(loader, count):
    return [next(loader) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])


def document_ids(tokenizer, batches) -> list[int]:
    """Ids of the documents that start in these batches (each starts with 'document N')."""
    found = []
    for batch in batches:
        for row in batch["input_ids"]:
            found += [int(m) for m in re.findall(r"document (\d+)", tokenizer.decode(row))]
    return found


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    config = DataConfig.from_dict({"sources": ["builtin:python-docs"], "seq_len": 256})
    assert config.sources == [{"name": "builtin:python-docs"}]
    assert DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"data\.seq_length: unknown key"):
        DataConfig.from_dict({"seq_length": 256})
    with pytest.raises(ConfigError, match=r"data\.mode: 'pad'"):
        DataConfig.from_dict({"mode": "pad"})
    with pytest.raises(ConfigError, match=r"data\.min_tokens"):
        DataConfig.from_dict({"min_tokens": -1})
    with pytest.raises(ConfigError, match=r"data\.sources\[1\]\.txt: unknown key"):
        DataConfig.from_dict({"sources": ["builtin:python-docs", {"file_name": "a", "txt": 1}]})


def test_filters_count_what_they_drop(tmp_path, bpe_tokenizer):
    assert processed_length("  Hello,   World!!  \n") == len("hello world")
    short = "Tiny, text!" + " !!! ... ???" * 50  # long, but its processed form is short
    texts = [document(0, words=60), short, document(1, words=8), document(2, words=60)]
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    config = data_config([str(path)], min_characters=40, min_tokens=30)
    report = inspect(config, tokenizer=bpe_tokenizer)["sources"][0]
    assert report["documents"] == 2
    assert report["dropped_min_characters"] == 1
    assert report["dropped_min_tokens"] == 1


def test_nfc_and_word_chunks_keep_the_tokens_of_the_whole_text(bpe_tokenizer):
    config = data_config(["builtin:python-docs"], chunk_characters=16)
    processor = DocumentProcessor(bpe_tokenizer, config)
    text = "the café  river, stone   cloud forest 🙂 ember quartz violet x " * 5
    assert len(processor._chunks(text)) > 10
    decomposed = unicodedata.normalize("NFD", text)
    [tokens] = processor.process([decomposed])
    whole = bpe_tokenizer(text, add_special_tokens=False).input_ids
    assert tokens.tolist() == [bpe_tokenizer.bos_token_id, *whole, bpe_tokenizer.eos_token_id]


def test_llama2_word_chunks_match_the_whole_text(llama2_tokenizer_path):
    from elmforge.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(llama2_tokenizer_path)
    processor = DocumentProcessor(
        tokenizer, data_config(["builtin:python-docs"], chunk_characters=16)
    )
    text = "One two  three\tfour five\nsix seven  eight nine ten eleven twelve 13 14 15 " * 5
    assert len(processor._chunks(text)) > 10
    [tokens] = processor.process([text])
    assert tokens.tolist() == [*tokenizer(text).input_ids, tokenizer.eos_token_id]


def test_packing_concatenates_documents_without_padding(tmp_path, bpe_tokenizer):
    texts = [document(i) for i in range(6)]
    config = data_config([str(write_jsonl(tmp_path / "a.jsonl", texts))], shuffle_buffer=1)
    loader = build_train_loader(config, bpe_tokenizer, micro_batch_size=2)
    batches = take(loader, 6)
    stream = torch.cat(
        [torch.cat([b["input_ids"], b["labels"][:, -1:]], 1).flatten() for b in batches]
    )
    processor = DocumentProcessor(bpe_tokenizer, config)
    expected = torch.tensor([t for doc in processor.process(texts) for t in doc.tolist()])
    assert torch.equal(stream[: len(expected)], expected)  # in file order with shuffle_buffer=1
    for batch in batches:
        assert batch["input_ids"].shape == batch["labels"].shape == (2, 32)
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
        assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    assert loader.stats["padding_tokens"] == 0 and loader.stats["sequences"] == 12


def test_padding_puts_one_document_per_sequence(tmp_path, bpe_tokenizer):
    texts = [document(i, words=5) for i in range(4)]
    config = data_config(
        [str(write_jsonl(tmp_path / "a.jsonl", texts))], mode="padding", seq_len=64
    )
    loader = build_train_loader(config, bpe_tokenizer, micro_batch_size=4)
    batch = next(loader)
    bos, eos = bpe_tokenizer.bos_token_id, bpe_tokenizer.eos_token_id
    for inputs, labels in zip(batch["input_ids"], batch["labels"]):
        real = int((labels != -100).sum()) + 1
        assert inputs[0] == bos and labels[real - 2] == eos
        assert (inputs[:real] == bos).sum() == 1
        assert (labels[real - 1 :] == -100).all()
    assert sorted(document_ids(bpe_tokenizer, [batch])) == [0, 1, 2, 3]
    stats = loader.stats
    assert 0 < stats["padding_fraction"] < 1
    assert stats["padding_fraction"] == stats["padding_tokens"] / (65 * 4)
    report = inspect(config, tokenizer=bpe_tokenizer)["total"]
    assert report["sequences"] == 4 and report["padding_fraction"] == pytest.approx(
        stats["padding_fraction"]
    )
    hf_labels = unshifted_labels(batch)
    assert torch.equal(hf_labels[:, 1:], batch["labels"][:, :-1])


def mixed_sources(tmp_path):
    """Eight jsonl files (file-level sharding) and one parquet file (row-level striding)."""
    for f in range(8):
        write_jsonl(
            tmp_path / f"part-{f:05d}.jsonl", [document(f * 5 + i, words=10) for i in range(5)]
        )
    write_parquet(tmp_path / "big.parquet", [document(100 + i, words=10) for i in range(13)])
    return [
        {"file_name": str(tmp_path / "part-{file_id:05d}.jsonl"), "file_id_range": [0, 8]},
        {"file_name": str(tmp_path / "big.parquet"), "weight": 0.5},
    ]


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (2, 0), (2, 2)])
def test_resumption_is_exact(tmp_path, bpe_tokenizer, world_size, num_workers):
    config = data_config(mixed_sources(tmp_path), seq_len=24, shuffle_buffer=3)
    for rank in range(world_size):
        build = functools.partial(
            build_train_loader,
            config,
            bpe_tokenizer,
            2,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
        )
        full = build()
        reference = take(full, 30)
        epochs = [
            s["block_start"]["epoch"] for w in full.state_dict()["workers"] for s in w["streams"]
        ]
        assert min(epochs) >= 1  # every reader has wrapped around every source at least once
        for cut in (5, 11):
            loader = build()
            assert_same_batches(take(loader, cut), reference[:cut])
            state = json.loads(json.dumps(loader.state_dict()))
            next(loader)  # prefetched or consumed later: must not leak into the state
            resumed = build()
            resumed.load_state_dict(state)
            assert_same_batches(take(resumed, 30 - cut), reference[cut:])
        assert len(json.dumps(state)) < 20_000


def test_ranks_and_workers_are_disjoint_and_cover_everything(tmp_path, bpe_tokenizer):
    sources = mixed_sources(tmp_path)
    config = data_config(sources, mode="padding", seq_len=96)
    seen: list[set[int]] = []
    for rank in range(2):
        loader = build_train_loader(
            config, bpe_tokenizer, 4, rank=rank, world_size=2, num_workers=2
        )
        seen.append(set(document_ids(bpe_tokenizer, take(loader, 16))))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(40)) | set(range(100, 113))


def test_hub_dataset_with_workers_reads_every_row(tmp_path, bpe_tokenizer):
    # A local dataset directory goes through the same `datasets` streaming code as a hub name.
    hub = tmp_path / "hub-like"
    hub.mkdir()
    for f in range(3):
        write_jsonl(hub / f"train-{f}.jsonl", [document(f * 6 + i, words=10) for i in range(6)])
    config = data_config([{"name": f"hf:{hub}"}], mode="padding", seq_len=96)
    loader = build_train_loader(config, bpe_tokenizer, 2, num_workers=2)
    seen = document_ids(bpe_tokenizer, take(loader, 12))  # 24 sequences, 18 documents
    assert set(seen) == set(range(18))


def test_state_of_another_layout_is_refused(tmp_path, bpe_tokenizer):
    config = data_config(mixed_sources(tmp_path))
    loader = build_train_loader(config, bpe_tokenizer, 2, world_size=2)
    next(loader)
    other = build_train_loader(config, bpe_tokenizer, 2, world_size=2, num_workers=2)
    with pytest.raises(DataError, match="num_workers was 0"):
        other.load_state_dict(loader.state_dict())


def test_file_sources_never_validate_on_training_data(tmp_path, bpe_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [document(i) for i in range(10)])
    held_out = write_jsonl(tmp_path / "held-out.jsonl", [document(i) for i in range(50, 60)])
    config = data_config([str(train)])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].*data.validation_sources"):
        build_train_loader(config, bpe_tokenizer, 2, split="validation")
    config = data_config([str(train)], validation_sources=[str(held_out)])
    batch = next(build_train_loader(config, bpe_tokenizer, 2, split="validation"))
    text = bpe_tokenizer.decode(batch["input_ids"][0])
    assert re.search(r"document 5\d says", text)


def test_bad_input(tmp_path, bpe_tokenizer):
    good = write_jsonl(tmp_path / "good.jsonl", [document(i) for i in range(4)])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9 ok"}\n{"body": "x"}\n' + good.read_bytes())
    config = data_config([str(bad)])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1: not UTF-8"):
        next(build_train_loader(config, bpe_tokenizer, 2))
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: no 'text' field"):
        next(build_train_loader(data_config([str(bad)], max_bad_rows=1), bpe_tokenizer, 2))
    loader = build_train_loader(data_config([str(bad)], max_bad_rows=2), bpe_tokenizer, 2)
    next(loader)
    assert loader.stats["bad_rows"] == 2
    # The same through a DataLoader worker: the same one-line error, not a worker traceback.
    with pytest.raises(DataError, match=r"^\S*bad\.jsonl: line 1: not UTF-8[^\n]*$"):
        next(build_train_loader(config, bpe_tokenizer, 2, num_workers=1))
    # Missing shards and patterns without files fail when the loader is built.
    pattern = str(tmp_path / "good-{file_id:05d}.jsonl")
    good.rename(tmp_path / "good-00000.jsonl")
    with pytest.raises(DataError, match=r"good-00001\.jsonl: missing shard"):
        build_train_loader(
            data_config([{"file_name": pattern, "file_id_range": [0, 2]}]), bpe_tokenizer, 2
        )
    with pytest.raises(DataError, match="no file matches"):
        build_train_loader(data_config([str(tmp_path / "none-*.parquet")]), bpe_tokenizer, 2)
    # Empty source, or a source whose documents are all filtered out: a clear error, no hang.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no documents left"):
        next(build_train_loader(data_config([str(empty)]), bpe_tokenizer, 2))
    with pytest.raises(DataError, match="min_tokens=100000"):
        next(
            build_train_loader(
                data_config([pattern.replace("{file_id:05d}", "00000")], min_tokens=100000),
                bpe_tokenizer,
                2,
            )
        )
