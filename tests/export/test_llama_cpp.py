"""llama.cpp itself runs our GGUF files (through llama-cpp-python): same greedy tokens and logits
as elmforge, same tokenisation, and the embedded chat template renders like Apple's.

Tolerances, relative to the step's largest logit: f32 files 1e-5 (measured at most 7e-7 over the
four shapes: llama.cpp computes in f32; the KV cache is set to f32 too); f16 files 3e-3 against
elmforge running the same f16-rounded weights (ggml also rounds activations to f16 inside its
matmuls; measured at most 5.6e-4). So that equal greedy tokens mean something, every step's gap
between elmforge's top two logits must exceed twice the tolerance (the smallest gap measured is
2.4% of the largest logit): a disagreement within tolerance cannot flip a token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from elmforge.data.chat import APPLE_CHAT_TEMPLATE, render_chat
from elmforge.export.gguf import hf_to_gguf
from elmforge.export.gguf_read import gguf_to_hf
from elmforge.model.convert import load_pretrained
from tests.export.helpers import PROBE_TEXTS, make_model_dir

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is a test dependency (pip install llama-cpp-python)"
)

STEPS = 16
TOLERANCE = {"f32": 1e-5, "f16": 3e-3}
GGML_TYPE_F32 = 0  # ggml_type of the KV cache
# shape -> (seed, embedding scale) picked so that no greedy step is a near tie (see above).
SHAPES = {
    "scaled-3-layers": (0, 4.0),
    "uniform-2-layers": (1, 4.0),
    "scaled-1-layer": (0, 4.0),
    "scaled-4-layers-gqa2": (2, 4.0),
}


@pytest.fixture(autouse=True)
def _no_amx_repacking(monkeypatch):
    """Keep llama.cpp's weights in its plain CPU buffers: on CPUs with AMX_INT8 (this machine)
    its AMX repacking of q8_0 weights segfaults in ggml_backend_amx_mul_mat during the first
    decode, whatever the file (ggml-org/llama.cpp#20824; llama-cpp-python 0.3.36). The tests
    check our files, not that kernel."""
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        value = default_params()
        value.use_extra_bufts = False
        return value

    monkeypatch.setattr(llama_cpp.llama.llama_cpp, "llama_model_default_params", params)


def open_llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, n_batch=64,
                           logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                           verbose=False)  # fmt: skip


def llama_greedy(path: Path, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    llm = open_llama(path)
    try:
        llm.eval(prompt)
        tokens, rows = list(prompt), []
        for _ in range(steps):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            rows.append(row)
            tokens.append(int(row.argmax()))
            llm.eval([tokens[-1]])
        return tokens, np.stack(rows)
    finally:
        llm.close()


def our_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    tokens, rows = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            row = model(torch.tensor([tokens])).logits[0, -1]
            rows.append(row.numpy())
            tokens.append(int(row.argmax()))
    return tokens, np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("out_type", ["f32", "f16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_greedy_continuations_equal_elmforge(shape, out_type, sp_model, tmp_path):
    seed, scale = SHAPES[shape]
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape=shape, seed=seed,
                               embedding_scale=scale)  # fmt: skip
    path = hf_to_gguf(model_dir, tmp_path / f"m-{out_type}.gguf", out_type)
    # elmforge on exactly the weights in the file (f16-rounded for f16; read back by gguf-to-hf).
    reference = load_pretrained(gguf_to_hf(path, tmp_path / "back"))
    prompt = [1, 17, 42, 99, 230, 7]
    ours, our_logits = our_greedy(reference, prompt, STEPS)
    theirs, their_logits = llama_greedy(path, prompt, STEPS)

    scale_of = np.abs(our_logits).max(axis=1)
    tolerance = TOLERANCE[out_type] * scale_of
    top2 = np.sort(our_logits, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 2 * tolerance), "a near tie: pick another seed"
    assert np.all(np.abs(our_logits - their_logits).max(axis=1) <= tolerance)
    assert theirs == ours


@pytest.mark.parametrize("out_type", ["bf16", "q8_0"])
def test_bf16_and_q8_0_files_run_in_llama_cpp(out_type, sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape="scaled-4-layers-gqa2")
    path = hf_to_gguf(model_dir, tmp_path / f"m-{out_type}.gguf", out_type)
    reference = load_pretrained(gguf_to_hf(path, tmp_path / "back"))
    prompt = list(range(1, 30))
    _, ours = our_greedy(reference, prompt, 1)
    _, theirs = llama_greedy(path, prompt, 1)
    # ggml rounds activations to bf16 / q8_0 blocks in these matmuls: a few percent at most,
    # where a misread block layout would give unrelated logits.
    assert np.linalg.norm(theirs - ours) / np.linalg.norm(ours) < 0.05


def test_tokenisation_equals_sentencepiece(sp_model, tmp_path):
    import sentencepiece as spm

    path = hf_to_gguf(make_model_dir(tmp_path / "m", sp_model), tmp_path / "m.gguf")
    processor = spm.SentencePieceProcessor(model_file=str(sp_model))
    llm = open_llama(path)
    try:
        for text in PROBE_TEXTS:
            expected = [1, *processor.encode(text)]
            assert llm.tokenize(text.encode("utf-8"), add_bos=True) == expected, text
    finally:
        llm.close()


def test_byte_level_bpe_tokenisation_equals_ours(bpe_tokenizer_dir, tmp_path):
    from elmforge.data.tokenizer import load_tokenizer

    path = hf_to_gguf(make_model_dir(tmp_path / "m", bpe_tokenizer_dir), tmp_path / "m.gguf")
    ours = load_tokenizer(bpe_tokenizer_dir)
    llm = open_llama(path)
    try:
        for text in PROBE_TEXTS:
            assert llm.tokenize(text.encode("utf-8"), add_bos=True) == ours(text).input_ids, text
    finally:
        llm.close()


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is OpenELM?"},
        {"role": "assistant", "content": "A small language model."},
        {"role": "user", "content": "Who made it?\nTwo lines."},
    ],
]


def test_embedded_chat_template_renders_like_ours(sp_model, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model_dir = make_model_dir(tmp_path / "OpenELM-tiny-Instruct", sp_model)
    path = hf_to_gguf(model_dir, tmp_path / "chat.gguf")
    llm = open_llama(path)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        # What llama-cpp-python's chat handler is built from (Llama.__init__).
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
    finally:
        llm.close()
    assert template == APPLE_CHAT_TEMPLATE and eos == "</s>"
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                            add_generation_prompt=generation_prompt)  # fmt: skip
            rendered = formatter(messages=messages).prompt
            assert rendered == render_chat(messages, generation_prompt, eos_token=eos)


@pytest.mark.slow
def test_llama2_tokenisation_equals_sentencepiece(llama2_tokenizer_path, tmp_path):
    import sentencepiece as spm

    model_dir = make_model_dir(tmp_path / "m", llama2_tokenizer_path, shape="uniform-2-layers",
                               vocab_size=32000)  # fmt: skip
    path = hf_to_gguf(model_dir, tmp_path / "m.gguf", "f16")
    processor = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    llm = open_llama(path)
    try:
        for text in PROBE_TEXTS:
            assert llm.tokenize(text.encode("utf-8"), add_bos=True) == [1, *processor.encode(text)]
    finally:
        llm.close()
