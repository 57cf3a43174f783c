"""Tokenizers: LLaMA-2 exactly like sentencepiece; BPE training; save/load; bad input."""

from __future__ import annotations

import json
import random

import pytest

from elmforge.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from elmforge.errors import ElmforgeError

VARIED = [
    "with  bobby",
    "Hello world",
    "  two leading spaces",
    " one leading space",
    "trailing  ",
    "tabs\tand\nnewlines\n\n\nthree",
    "\t\tindented\n    code = 1",
    "12345 678.9 0x1F -42 3,141,592",
    "naïve café Übergrößenträger",
    "日本語のテキスト and 中文",
    "emoji 🤖🚀 and ZWJ 👩‍💻",
    "a   b    c     d",
    " ",
    "",
    "\u00a0non-breaking\u2009thin",
    "<html><body>tags & entities &amp;</body></html>",
    "def f(x):\n    return x ** 2  # squared\n",
    "Ω≈ç√∫˜µ≤≥÷",
    "CAPS lower MiXeD",
    "unknown char \U0001f9ff and control \x07 byte",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = [*"abcdefghij XYZ  \t\n0123456789.,;!?'\"-éü中🤖", "  ", "\n\n", "   "]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_path):
    import sentencepiece

    return (
        load_tokenizer(llama2_tokenizer_path),
        sentencepiece.SentencePieceProcessor(model_file=str(llama2_tokenizer_path)),
    )


def test_llama2_matches_sentencepiece_on_varied_strings(llama2):
    fast, reference = llama2
    strings = VARIED + _random_strings(300)
    for text in strings:
        expected = reference.encode(text)
        assert fast(text, add_special_tokens=False).input_ids == expected, repr(text)
        assert fast.decode(expected) == reference.decode(expected), repr(text)


def test_llama2_matches_sentencepiece_on_piqa(llama2, shared_dir):
    path = shared_dir / "data" / "eval" / "piqa" / "validation.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    fast, reference = llama2
    texts = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        texts += [row["goal"], row["sol1"], row["sol2"], f"{row['goal']} {row['sol1']}"]
    encoded = fast(texts, add_special_tokens=False).input_ids  # batch: the Rust fast path
    mismatches = [t for t, ids in zip(texts, encoded) if ids != reference.encode(t)]
    assert len(texts) > 7000
    assert not mismatches, mismatches[:3]


def test_llama2_special_tokens_and_save_load(llama2, tmp_path):
    fast, _ = llama2
    assert (fast.unk_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    assert fast("x").input_ids[0] == 1 and fast("x").input_ids[-1] != 2
    fast.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.add_bos_token
    for text in VARIED:
        assert again(text).input_ids == fast(text).input_ids
    assert len(again) == 32000


def test_train_bpe_roundtrip(tmp_path):
    texts = [f"The quick brown fox {i} jumps over the lazy dog. café 🤖\n" * 3 for i in range(200)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400, out_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 3
    loaded = load_tokenizer(tmp_path / "tok")
    for text in [*VARIED, texts[0]]:
        ids = loaded(text).input_ids
        assert ids == tokenizer(text).input_ids
        assert ids[0] == 1
        assert loaded.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    assert len(tokenizer("quick brown fox jumps").input_ids) < len("quick brown fox jumps") / 2


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(ElmforgeError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(ElmforgeError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ElmforgeError, match="not a SentencePiece model"):
        load_tokenizer(bogus)
    with pytest.raises(ElmforgeError, match="at least 260"):
        train_bpe_tokenizer(["a"], vocab_size=10)


def test_tokenizer_install_puts_llama2_where_every_verb_finds_it(
    llama2_tokenizer_path, tmp_path, monkeypatch, capsys
):
    import sentencepiece

    from elmforge.cli.main import main
    from elmforge.data.tokenizer import default_tokenizer_path, llama2_cache_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ELMFORGE_LLAMA2_TOKENIZER", raising=False)
    target = tmp_path / "cache" / "elmforge" / "llama2-tokenizer.model"
    assert llama2_cache_path() == target
    assert main(["tokenizer", "install", str(llama2_tokenizer_path)]) == 0
    assert target.read_bytes() == llama2_tokenizer_path.read_bytes()
    assert default_tokenizer_path() == target.resolve()
    assert main(["tokenizer", "install", str(llama2_tokenizer_path)]) == 0  # same file: fine
    # Not LLaMA-2's: a small SentencePiece BPE model, and a file that is no model at all.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"word{i} and more words {i % 7}" for i in range(500)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "small"), vocab_size=60,
        model_type="bpe", minloglevel=2,
    )  # fmt: skip
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01not a model")
    capsys.readouterr()
    for path, mention in (
        (tmp_path / "small.model", "not LLaMA-2's"),
        (junk, "not a SentencePiece"),
    ):
        assert main(["tokenizer", "install", str(path)]) == 2
        assert mention in capsys.readouterr().err
    # A different file already installed is replaced only with --force.
    target.write_bytes(b"something else")
    assert main(["tokenizer", "install", str(llama2_tokenizer_path)]) == 2
    assert "--force replaces it" in capsys.readouterr().err
    assert target.read_bytes() == b"something else"
    assert main(["tokenizer", "install", str(llama2_tokenizer_path), "--force"]) == 0
    assert target.read_bytes() == llama2_tokenizer_path.read_bytes()


def test_llama2_lookup_order_and_the_development_switch(tmp_path, monkeypatch):
    """$ELMFORGE_LLAMA2_TOKENIZER, then the user cache, then (in a checkout, unless
    $ELMFORGE_NO_DEV_FALLBACK=1) the shared data; tests never see the developer's own cache."""
    from pathlib import Path

    from elmforge.data.tokenizer import default_tokenizer_path, llama2_cache_path

    assert Path.home() / ".cache" not in llama2_cache_path().parents  # conftest's isolation
    shared = tmp_path / "shared" / "data" / "llama2-tokenizer.model"
    cache = tmp_path / "cache" / "elmforge" / "llama2-tokenizer.model"
    given = tmp_path / "given.model"
    for path in (shared, cache, given):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(path.name.encode())
    monkeypatch.setenv("ELMFORGE_SHARED", str(tmp_path / "shared"))
    assert default_tokenizer_path() == shared
    monkeypatch.setenv("ELMFORGE_NO_DEV_FALLBACK", "1")
    assert default_tokenizer_path() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_tokenizer_path() == cache
    monkeypatch.setenv("ELMFORGE_LLAMA2_TOKENIZER", str(given))
    assert default_tokenizer_path() == given
    # A variable pointing nowhere is an error naming it, not a silent fall-through to the cache.
    for wrong, problem in ((tmp_path / "typo.model", "no such file"), (tmp_path, "a directory")):
        monkeypatch.setenv("ELMFORGE_LLAMA2_TOKENIZER", str(wrong))
        with pytest.raises(
            ElmforgeError, match=rf"\$ELMFORGE_LLAMA2_TOKENIZER=.*: (is )?{problem}"
        ):
            default_tokenizer_path()


def test_encodings_are_probed_for_bos_and_eos(tmp_path):
    from elmforge.data.tokenizer import adds_special_tokens

    trained = train_bpe_tokenizer(["some text to learn from"] * 20, vocab_size=270)
    assert adds_special_tokens(trained) == (True, False)
    trained.add_bos_token, trained.add_eos_token = False, True
    assert adds_special_tokens(trained) == (False, True)


def test_saved_tokenizer_joins_a_directory_with_tokenizer_json_last(tmp_path, renames):
    """Readers look for tokenizer.json: it is renamed into place after the rest of the set."""
    (tmp_path / "config.json").write_text("{}")
    tokenizer = train_bpe_tokenizer(["some text to learn from"] * 20, 270, out_dir=tmp_path)
    assert renames[-1] == "tokenizer.json" and "tokenizer_config.json" in renames
    assert (tmp_path / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", *renames])
    assert load_tokenizer(tmp_path)("some text").input_ids == tokenizer("some text").input_ids
