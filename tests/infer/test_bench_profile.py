"""`elmforge bench --profile` on a tiny model: the split of a prefill and a decode step into
products, attention, elementwise ops, dispatch and generate's loop, in bench.json and bench.md."""

from __future__ import annotations

import json

import pytest
import torch

from elmforge import OpenELMForCausalLM
from elmforge.bench.profile import CATEGORIES, profile_generate
from tests.cli_support import run_elmforge


@pytest.fixture(scope="module")
def model_dir(micro_dir):
    return micro_dir


def test_the_split_adds_up_and_names_every_weight_shape(model_dir):
    model = OpenELMForCausalLM.from_pretrained(model_dir).eval()
    model.decode_compile = "off"
    with torch.inference_mode():
        split = profile_generate(model, [[5] * 12], 6, weight_itemsize=4)
    assert split["decode"]["steps"] == 5 and split["prefill"]["steps"] == 1
    for step in ("prefill", "decode"):
        ms = split[step]["ms_per_step"]
        assert set(ms) == set(CATEGORIES) and all(v >= 0 for v in ms.values())
        assert ms["matvec"] > 0 and ms["attention"] > 0
        assert split[step]["step_ms"] == pytest.approx(sum(ms.values()))
    products = {tuple(p["weight_shape"]): p for p in split["decode"]["products"]}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert {tuple(m.weight.shape) for m in linears} == set(products)
    layers = model.config.num_transformer_layers
    assert sum(p["calls_per_step"] for p in products.values()) == 4 * layers + 1
    head = products[tuple(model.lm_head.weight.shape)]
    assert head["bytes_per_call"] == model.lm_head.weight.numel() * 4 and head["gb_s"] > 0


@pytest.mark.slow
def test_bench_profile_writes_the_split(model_dir, tmp_path):
    out = tmp_path / "bench"
    proc = run_elmforge(
        "bench", model_dir, "--prompt", "8", "--generate", "4", "--dtype", "fp32,int8",
        "--paths", "eager", "--repeats", "1", "--threads", "1", "--roofline-mib", "64",
        "--profile", "--out", out, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "bench.json").read_text())
    profiles = payload["profile"]
    assert [(p["engine"], p["dtype"]) for p in profiles] == [
        ("elmforge eager", "fp32"), ("elmforge eager", "int8")
    ]  # fmt: skip
    for p in profiles:
        assert p["peak_gflop_s"] > 0 and p["peak_dtype"] == "float32"
        assert set(p["decode"]["ms_per_step"]) == set(CATEGORIES)
        assert all(x["gb_s"] > 0 for x in p["decode"]["products"])
        unprofiled = p["unprofiled"]
        assert unprofiled["step_ms"] > 0 and unprofiled["products_alone_ms"] > 0
        assert unprofiled["outside_products_ms"] == pytest.approx(
            unprofiled["step_ms"] - unprofiled["products_alone_ms"]
        )
    int8_ops = {x["op"] for x in profiles[1]["decode"]["products"]}
    assert int8_ops <= {"elmforge::linear_int8", "aten::linear"}
    text = (out / "bench.md").read_text()
    assert "## Profile" in text and "| elmforge eager | int8 | decode |" in text
    assert "products alone ms" in text
