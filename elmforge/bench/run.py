"""``elmforge bench``: the paper's throughput table, with the roofline and peers in the same run.

For every dtype asked, the engines (elmforge's eager and compiled ``generate``, and where present
llama.cpp, mlx-lm, the naive port and the uniform-allocation twin) each live in a worker process
(:mod:`elmforge.bench.engines`) holding the same weights. For every batch size, every
repeat sends the same random prompt to each worker in turn (the order rotating) plus a memory
roofline probe, so the machine's load hits them alike; the first repeat is an untimed warm-up.
Reported per engine, dtype and batch: prompt tokens/s, generation tokens/s, time to first token
(medians with min and max), peak memory, weight bytes read per generated token, the bandwidth
that implies and its fraction of the roofline measured in the same run; then the issue's targets
(ratios to llama.cpp, batched scaling, OpenELM vs uniform). Engines of one dtype run side by
side; dtypes run one after another (memory). Outputs: ``bench.json``, ``bench.md``, ``bench.png``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elmforge.bench.engines import EngineSpec, silent_log, worker_main
from elmforge.errors import CheckpointError, ElmforgeError, first_line
from elmforge.layout import resolve_model_dir
from elmforge.model.uniform import uniform_twin

BENCH_DTYPES = ("fp32", "bf16", "fp16", "int8", "int4")
PATHS = ("eager", "compiled")
AGAINST = ("llama.cpp", "mlx-lm", "naive", "uniform")
# What each peer runs for each of our dtypes (bf16 is compared with llama.cpp's f16, as in the
# issue: llama.cpp's CPU f16 path is its fast half-precision one).
PEER_FORMATS = {
    "llama.cpp": {"fp32": "f32", "bf16": "f16", "fp16": "f16", "int8": "q8_0", "int4": "q4_0"},
    "mlx-lm": {
        "fp32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
        "int8": "8-bit, group 32",
        "int4": "4-bit, group 32",
    },
}
LOAD_TIMEOUT_S = 3600  # a cold torch.compile warm-up on 2 busy cores takes minutes
RUN_TIMEOUT_S = 1800


@dataclass
class BenchConfig:
    model: str
    """A model directory, or a preset name (``OpenELM-270M``: random weights)."""
    out: Path
    prompt: int = 128
    generate: int = 64
    batches: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("fp32",)
    paths: tuple[str, ...] = PATHS
    against: tuple[str, ...] = ()
    threads: int | None = None
    device: str = "cpu"
    repeats: int = 5
    seed: int = 0
    roofline_mib: int = 1024
    """Size of the roofline probe's weights: must be far larger than the CPU's caches."""
    profile: bool = False
    """Also split a prefill and a decode step of each elmforge engine (``bench.profile``)."""
    force: bool = False
    skipped: list[dict[str, str]] = field(default_factory=list)


def check_config(config: BenchConfig) -> None:
    """One-line errors naming the option, before anything is loaded."""
    if config.prompt < 1:
        raise ElmforgeError(f"--prompt must be at least 1, got {config.prompt}")
    if config.generate < 2:
        raise ElmforgeError(
            f"--generate must be at least 2 (one rate interval), got {config.generate}"
        )
    if not config.batches or any(b < 1 or b > 64 for b in config.batches):
        raise ElmforgeError(f"--batch: sizes must be 1 to 64, got {list(config.batches)}")
    for name, values, known in (
        ("--dtype", config.dtypes, BENCH_DTYPES),
        ("--paths", config.paths, PATHS),
        ("--against", config.against, AGAINST),
    ):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ElmforgeError(
                f"{name}: unknown {', '.join(unknown)}; expected {', '.join(known)}"
            )
    if not config.dtypes or not config.paths:
        raise ElmforgeError("--dtype and --paths need at least one value each")
    if config.repeats < 1:
        raise ElmforgeError(f"--repeats must be at least 1, got {config.repeats}")
    if config.roofline_mib < 16:
        raise ElmforgeError(f"--roofline-mib must be at least 16, got {config.roofline_mib}")
    if config.threads is not None and config.threads < 1:
        raise ElmforgeError(f"--threads must be at least 1, got {config.threads}")
    if config.device not in ("cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ElmforgeError(f"--device: expected cpu or cuda, got {config.device}")
    from elmforge.runtime import pick_device

    pick_device(config.device)  # a GPU this machine lacks, in the words every verb uses


def _model_dir(config: BenchConfig, work: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """The model directory every engine loads, and how to describe it."""
    from elmforge.model.config import PRESETS

    given = Path(config.model).expanduser()
    if given.exists():
        # Like every verb: a model directory, a run's final/, a checkpoint's model/, or the same
        # one-line CheckpointError.
        model_dir = resolve_model_dir(given)
        return model_dir, str(model_dir)
    if config.model.lower() not in {name.lower() for name in PRESETS}:
        raise CheckpointError(
            f"{config.model}: neither a model directory nor a preset ({', '.join(PRESETS)})"
        )
    from elmforge.model.config import OpenELMConfig

    log(f"building {config.model} with random weights (seed {config.seed})")
    return _save_random(OpenELMConfig.from_name(config.model), work / "model", config.seed), (
        f"{config.model} preset, random weights (seed {config.seed})"
    )


def _save_random(model_config: Any, directory: Path, seed: int) -> Path:
    import torch

    from elmforge.model.modeling import OpenELMForCausalLM
    from elmforge.progress import quiet_transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        OpenELMForCausalLM(model_config).save_pretrained(directory)
    return directory


def _peer_weights(engine: str, dtype: str, model_dir: Path, work: Path) -> str:
    """The file or directory the peer loads for ``dtype``; raises with the reason it cannot."""
    if engine == "mlx-lm":
        import mlx_lm  # noqa: F401  (the reason is its absence)

        return str(model_dir)
    try:
        import llama_cpp
    except ImportError:
        raise ElmforgeError("llama-cpp-python is not installed") from None
    try:
        from elmforge.export.gguf import hf_to_gguf
    except ImportError:
        raise ElmforgeError("export not available (elmforge.export.gguf)") from None
    kind = PEER_FORMATS["llama.cpp"][dtype]
    target = work / f"model-{kind}.gguf"
    if target.exists():
        return str(target)
    if kind != "q4_0":
        hf_to_gguf(model_dir, target, kind, progress=False)
        return str(target)
    # q4_0: llama.cpp's own quantiser, from the f32 file.
    source = Path(_peer_weights(engine, "fp32", model_dir, work))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    quiet = llama_cpp.llama_log_callback(silent_log)  # a line per tensor otherwise
    llama_cpp.llama_log_set(quiet, None)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise ElmforgeError("llama.cpp could not quantise to q4_0")
    return str(target)


def plan_engines(
    config: BenchConfig, dtype: str, model_dir: Path, uniform_dir: Path | None, work: Path
) -> list[EngineSpec]:
    """The engines of one dtype; peers that cannot run are recorded in ``config.skipped``."""
    threads = config.threads or os.cpu_count() or 1
    common = dict(
        dtype=dtype,
        device=config.device,
        threads=threads,
        batches=config.batches,
        prompt=config.prompt,
        generate=config.generate,
    )
    specs = [
        EngineSpec("elmforge", weights=str(model_dir), path=path, **common) for path in config.paths
    ]
    if "uniform" in config.against and uniform_dir is not None:
        specs += [
            EngineSpec("elmforge", weights=str(uniform_dir), path=path, variant="uniform", **common)
            for path in config.paths
        ]
    for peer in config.against:
        if peer == "uniform":
            continue
        reason = None
        if config.device != "cpu":
            reason = f"{peer} runs on the CPU here, not {config.device}"
        elif peer == "naive" and dtype in ("int8", "int4"):
            reason = "the naive port has no quantised weights"
        if reason is None and peer == "naive":
            specs.append(EngineSpec("naive", weights=str(model_dir), **common))
            continue
        if reason is None:
            try:
                weights = _peer_weights(peer, dtype, model_dir, work)
                fmt = PEER_FORMATS[peer][dtype]
                specs.append(EngineSpec(peer, weights=weights, peer_format=fmt, **common))
                continue
            except ImportError as err:
                reason = f"{err.name or 'a module'} is not installed"
            except Exception as err:  # a conversion that fails is that column's skip reason
                reason = first_line(err)
        config.skipped.append({"engine": peer, "dtype": dtype, "reason": reason})
    return specs


class Worker:
    """One engine's process and its pipe."""

    def __init__(self, spec: EngineSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self.spec = spec
        self.connection, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, spec), daemon=True)
        self.process.start()
        child.close()

    def receive(self, timeout: float) -> tuple[str, Any]:
        if not self.connection.poll(timeout):
            return "error", f"no answer within {timeout:.0f} s"
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join(5)
            return "error", f"the worker exited (code {self.process.exitcode})"

    def run(self, tokens: list[list[int]]) -> tuple[str, Any]:
        self.connection.send(("run", tokens))
        return self.receive(RUN_TIMEOUT_S)

    def profile(self, tokens: list[list[int]]) -> tuple[str, Any]:
        self.connection.send(("profile", tokens))
        return self.receive(RUN_TIMEOUT_S)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the worker may be gone already
            self.connection.send(("stop",))
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def _prompts(config: BenchConfig, vocab: int) -> dict[int, list[list[int]]]:
    """Random prompt token ids per batch size (ids 3..vocab-1: no bos/eos/unk), seeded."""
    rng = random.Random(config.seed)
    longest = max(config.batches)
    rows = [[rng.randrange(3, vocab) for _ in range(config.prompt)] for _ in range(longest)]
    return {batch: rows[:batch] for batch in config.batches}


def measure(
    config: BenchConfig,
    dtype: str,
    specs: list[EngineSpec],
    roofline: Worker,
    prompts: dict[int, list[list[int]]],
    log: Callable[[str], None],
    profiles: list[dict] | None = None,
) -> tuple[dict[str, dict], list[dict]]:
    """Load the engines, then time them in turns (then profile elmforge's, if ``profiles`` is a
    list to append to). Returns (load info by label, samples)."""
    workers = [Worker(spec) for spec in specs]
    info: dict[str, dict] = {}
    live: list[Worker] = []
    for worker in workers:
        log(f"  loading {worker.spec.label} ({worker.spec.dtype})")
        status, answer = worker.receive(LOAD_TIMEOUT_S)
        if status == "ok":
            info[worker.spec.label] = answer
            live.append(worker)
        else:
            config.skipped.append(
                {"engine": worker.spec.label, "dtype": worker.spec.dtype, "reason": answer}
            )
            worker.stop()
    samples: list[dict] = []
    rounds = len(config.batches) * (config.repeats + 1)
    started, done = time.perf_counter(), 0
    try:
        for batch in config.batches:
            for repeat in range(config.repeats + 1):  # repeat 0 is the warm-up
                turn = live[repeat % len(live) :] + live[: repeat % len(live)] if live else []
                for worker in [*turn, roofline]:
                    status, answer = worker.run(prompts[batch])
                    if status != "ok":
                        config.skipped.append(
                            {
                                "engine": worker.spec.label,
                                "dtype": worker.spec.dtype,
                                "reason": f"failed at batch {batch}: {answer}",
                            }
                        )
                        if worker is roofline:
                            raise ElmforgeError(f"the roofline probe failed: {answer}")
                        live.remove(worker)
                        worker.stop()
                        continue
                    if repeat:
                        samples.append(
                            {"label": worker.spec.label, "batch": batch, "dtype": dtype, **answer}
                        )
                done += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (rounds - done)
                log(
                    f"  {dtype} batch {batch} repeat {repeat}/{config.repeats}"
                    f"{' (warm-up)' if not repeat else ''}: {elapsed:.0f} s, ETA {eta:.0f} s"
                )
        if profiles is not None:
            _profile(live, dtype, prompts[min(config.batches)], profiles, log)
    finally:
        for worker in live:
            worker.stop()
    return info, samples


def _profile(
    live: list[Worker], dtype: str, tokens: list[list[int]], profiles: list[dict], log: Callable
) -> None:
    """One profiled ``generate`` per elmforge engine (after the timed turns: the profiler's cost
    never touches the rates)."""
    for worker in live:
        if worker.spec.engine != "elmforge" or worker.spec.variant != "openelm":
            continue
        log(f"  profiling {worker.spec.label} ({dtype})")
        status, answer = worker.profile(tokens)
        if status == "ok":
            profiles.append({"engine": worker.spec.label, "dtype": dtype,
                             "batch": len(tokens), **answer})  # fmt: skip
        else:
            profiles.append({"engine": worker.spec.label, "dtype": dtype, "error": answer})


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, write ``bench.json``/``bench.md``/``bench.png`` into ``config.out``, return the
    JSON payload."""
    from elmforge.bench.report import build_payload, write_reports
    from elmforge.files import atomic_directory, claim_output
    from elmforge.model.config import OpenELMConfig

    check_config(config)
    if config.device == "cpu":
        from elmforge.model import cpu_kernels

        cpu_kernels.load_kernels()  # built once here, not by several workers at a time
    local = Path(config.model).expanduser()
    out = claim_output(config.out, "bench", config.force, inputs=(local,) if local.exists() else ())
    with tempfile.TemporaryDirectory(prefix="elmforge-bench-") as tmp:
        work = Path(tmp)
        model_dir, source = _model_dir(config, work, log)
        try:
            model_config = OpenELMConfig.from_pretrained(model_dir)
        except (OSError, ValueError) as err:
            raise ElmforgeError(
                f"{model_dir / 'config.json'}: not an OpenELM config ({first_line(err)})"
            ) from None
        longest = config.prompt + config.generate
        if longest > model_config.max_context_length:
            raise ElmforgeError(
                f"--prompt + --generate = {longest} exceeds the model's context "
                f"({model_config.max_context_length})"
            )
        uniform_dir = None
        if "uniform" in config.against:
            twin = uniform_twin(model_config)
            uniform_dir = _save_random(twin, work / "uniform", config.seed)
        prompts = _prompts(config, model_config.vocab_size)
        threads = config.threads or os.cpu_count() or 1
        probe = EngineSpec("roofline", dtype="fp32", weights=str(config.roofline_mib),
                           device=config.device, threads=threads)  # fmt: skip
        roofline = Worker(probe)
        status, answer = roofline.receive(LOAD_TIMEOUT_S)
        if status != "ok":
            raise ElmforgeError(f"the roofline probe could not start: {answer}")
        infos: dict[tuple[str, str], dict] = {}
        samples: list[dict] = []
        profiles: list[dict] | None = [] if config.profile else None
        try:
            for dtype in config.dtypes:
                log(f"{dtype}: preparing engines")
                specs = plan_engines(config, dtype, model_dir, uniform_dir, work)
                info, measured = measure(config, dtype, specs, roofline, prompts, log, profiles)
                infos.update({(label, dtype): value for label, value in info.items()})
                samples += measured
        finally:
            roofline.stop()
        payload = build_payload(
            config=asdict(config) | {"out": str(config.out), "threads": threads},
            model={"source": source, "parameters": model_config.num_parameters_total(),
                   "uniform_parameters": uniform_twin(model_config).num_parameters_total()
                   if uniform_dir else None},
            infos=infos,
            samples=samples,
            skipped=config.skipped,
            profile=profiles,
        )  # fmt: skip
    with atomic_directory(out, verb="bench") as staging:
        write_reports(payload, staging)
    return payload
