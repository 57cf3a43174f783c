"""Per-request adapters on a real `elmforge serve` process: two LoRA adapters (one with an
embedding adapter) and the base, requested at once so they share the batch, each answer what
`elmforge generate --adapter` (or plain `generate`) gives; /v1/models lists all three."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import torch

from elmforge.finetune.adapters import add_adapter, lora_config
from tests.cli_support import run_elmforge
from tests.serve.server_support import running_server

PROMPT = "Question: which animal is small? Answer:"
TOKENS = 12


def write_adapter(model_dir: Path, out: Path, targets: tuple[str, ...], seed: int) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it changes the output."""
    from elmforge.modeldir.loading import load_model

    peft_model = add_adapter(
        load_model(model_dir, device="cpu", dtype="fp32"), lora_config("lora", 4, 8, 0.0, targets)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dirs(model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "terse": write_adapter(model_dir, root / "terse", ("qkv_proj", "proj_2"), seed=1),
        "chatty": write_adapter(
            model_dir, root / "chatty", ("token_embeddings", "out_proj", "proj_1"), seed=2
        ),
    }


def generate(model_dir: Path, *flags: str) -> str:
    proc = run_elmforge("generate", model_dir, "--prompt", PROMPT, "--greedy",
                        "--max-new-tokens", str(TOKENS), *flags)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.removeprefix(PROMPT).removesuffix("\n")


@pytest.mark.slow
def test_two_adapters_and_the_base_in_one_batch_equal_generate(model_dir, adapter_dirs, tmp_path):
    expected = {"base": generate(model_dir)}
    for name, directory in adapter_dirs.items():
        expected[name] = generate(model_dir, "--adapter", str(directory))
    assert len(set(expected.values())) == 3  # the adapters do change the output
    flags = [f for name, d in adapter_dirs.items() for f in ("--adapter", f"{name}={d}")]
    with running_server(model_dir, *flags, log_dir=tmp_path) as server:
        models = httpx.get(f"{server.api}/models").json()["data"]
        assert [m["id"] for m in models] == [str(model_dir), "terse", "chatty"]
        answers: dict[str, str] = {}
        served: dict[str, str] = {}
        start = threading.Barrier(3)

        def ask(name: str) -> None:
            model = str(model_dir) if name == "base" else name
            body = {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0}
            start.wait(timeout=30)
            answer = httpx.post(f"{server.api}/completions", json=body, timeout=120).json()
            answers[name] = answer["choices"][0]["text"]
            served[name] = answer["model"]

        threads = [threading.Thread(target=ask, args=(name,)) for name in expected]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert answers == expected
        # Each answer names the model the request asked for: the adapter, not the base.
        assert served == {"base": str(model_dir), "terse": "terse", "chatty": "chatty"}
        unknown = httpx.post(f"{server.api}/completions", json={"model": "nope", "prompt": "a"})
        assert unknown.status_code == 404
