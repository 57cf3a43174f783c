"""`elmforge bench` end to end on a tiny model: every field of bench.json, the Markdown table and
the PNG chart; peers (llama.cpp, mlx-lm, the naive port) measured or skipped with a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from elmforge import OpenELMForCausalLM
from elmforge.files import output_verb
from tests.cli_support import run_elmforge
from tests.export.helpers import train_sentencepiece
from tests.shapes import micro_config

ROW_FIELDS = {
    "engine", "dtype", "format", "batch", "prompt_tokens_per_s", "generation_tokens_per_s",
    "time_to_first_token_s", "peak_memory_bytes", "weight_bytes_per_step",
    "weight_bytes_per_generated_token", "bandwidth_gb_s", "roofline_gb_s", "roofline_fraction",
    "above_roofline",
    "warmup_s",
}  # fmt: skip
STATISTICS = ("prompt_tokens_per_s", "generation_tokens_per_s", "time_to_first_token_s",
              "bandwidth_gb_s")  # fmt: skip
PEERS = {"llama.cpp": "llama.cpp", "mlx-lm": "mlx-lm", "naive": "naive"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("micro")
    torch.manual_seed(0)
    OpenELMForCausalLM(micro_config()).save_pretrained(directory)
    train_sentencepiece(directory / "tokenizer.model")  # the GGUF file needs a vocabulary
    return directory


@pytest.mark.slow
def test_bench_writes_every_field_and_names_what_it_skipped(model_dir, tmp_path):
    out = tmp_path / "bench"
    proc = run_elmforge(
        "bench", model_dir, "--prompt", "8", "--generate", "3", "--batch", "1,2",
        "--dtype", "fp32,int8", "--paths", "eager", "--against", "llama.cpp,mlx-lm,naive,uniform",
        "--repeats", "2", "--threads", "1", "--roofline-mib", "64", "--out", out,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "bench.json").read_text())
    assert output_verb(out) == "bench"
    assert {"environment", "config", "model", "roofline", "rows", "skipped", "targets"} <= set(
        payload
    )
    roof = payload["roofline"]["gb_s"]
    assert roof["median"] > 0 and roof["n"] == 2 * 2 * 2  # dtypes x batches x repeats
    rows = payload["rows"]
    for row in rows:
        assert set(row) == ROW_FIELDS, row["engine"]
        for key in STATISTICS:
            stat = row[key]
            assert stat["n"] == 2 and 0 < stat["min"] <= stat["median"] <= stat["max"], (row, key)
            assert stat["spread"] == pytest.approx((stat["max"] - stat["min"]) / stat["median"])
        assert row["peak_memory_bytes"] > 10 * 2**20
        assert (
            row["weight_bytes_per_generated_token"] == row["weight_bytes_per_step"] / row["batch"]
        )
        assert row["roofline_fraction"] == pytest.approx(
            row["bandwidth_gb_s"]["median"] / row["roofline_gb_s"]
        )
    measured = {(r["engine"], r["dtype"], r["batch"]) for r in rows}
    for dtype in ("fp32", "int8"):
        for batch in (1, 2):
            assert ("elmforge eager", dtype, batch) in measured
            assert ("uniform (elmforge) eager", dtype, batch) in measured
    for peer in PEERS:
        for dtype in ("fp32", "int8"):
            ran = any(e.startswith(peer) and d == dtype for e, d, _ in measured)
            reasons = [s["reason"] for s in payload["skipped"]
                       if s["engine"].startswith(peer) and s["dtype"] == dtype]  # fmt: skip
            assert ran != bool(reasons), (peer, dtype, reasons)  # one or the other, with a reason
            assert all(reasons)
    assert any(s["engine"] == "naive" and s["dtype"] == "int8" for s in payload["skipped"])
    int8_row = next(r for r in rows if r["engine"] == "elmforge eager" and r["dtype"] == "int8")
    fp32_row = next(r for r in rows if r["engine"] == "elmforge eager" and r["dtype"] == "fp32")
    assert int8_row["weight_bytes_per_step"] < fp32_row["weight_bytes_per_step"] / 2
    names = [t["target"] for t in payload["targets"]]
    assert "fp32 decode >= 1.0x llama.cpp f32" in names
    assert "int8 OpenELM/uniform decode >= 0.98 (eager)" in names
    markdown = (out / "bench.md").read_text()
    assert "| engine | dtype | batch | prompt tok/s | generation tok/s" in markdown
    assert all(r["engine"] in markdown for r in rows)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "elmforge eager" in proc.stdout  # the table is printed too


@pytest.mark.parametrize(
    ("peer_format", "flags", "plain"),
    [("q8_0", "fpu avx512f amx_tile amx_int8", True), ("q4_0", "amx_int8", True),
     ("q8_0", "fpu avx512f avx512_vnni", False), ("f32", "amx_int8", False),
     ("f16", "amx_bf16 amx_int8", False)],
)  # fmt: skip
def test_llama_cpp_repacking_is_off_only_where_amx_crashes(tmp_path, peer_format, flags, plain):
    from elmforge.bench.engines import needs_plain_buffers

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    assert needs_plain_buffers(peer_format, str(cpuinfo)) is plain
    assert needs_plain_buffers(peer_format, str(tmp_path / "absent")) is False


@pytest.mark.slow
def test_a_terminated_bench_leaves_no_temporary_directory(model_dir, tmp_path):
    # SIGTERM (kill, a job scheduler's time limit) unwinds like Ctrl-C: the converted weights in
    # the bench's temporary directory are removed (on a 270M model they are about 2 GB).
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "CI": "true", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    argv = [sys.executable, "-m", "elmforge.cli.main", "bench", str(model_dir), "--prompt", "8",
            "--generate", "3", "--dtype", "fp32", "--against", "uniform", "--repeats", "50",
            "--threads", "1", "--roofline-mib", "64", "--out", str(tmp_path / "bench")]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    seen = []
    for line in proc.stdout:  # the measurement has started: the uniform twin is written
        seen.append(line)
        if "repeat 2/" in line:
            break
    assert proc.poll() is None, "".join(seen)[-2000:]
    assert list(scratch.glob("elmforge-bench-*/uniform/*")), "".join(seen)[-2000:]
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert list(scratch.glob("elmforge-bench-*")) == []  # (torch keeps its own caches there)
    assert not (tmp_path / "bench").exists()
