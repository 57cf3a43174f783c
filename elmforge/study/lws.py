"""``elmforge study lws``: layer-wise scaling against a matched uniform model, over seeds.

The study directory::

    study.json             the plan: both arms' model sections and parameter counts, every
                           run's full pretraining config, the evaluation settings
    tokenizer/             the BPE tokenizer every run shares (data.tokenizer: bpe)
    runs/ARM-seedN/        a normal pretraining run directory per arm and seed
    logs/ARM-seedN.log     what that run printed
    evaluations/ARM-seedN.json   its final model's held-out scores (cached)
    report.json, report.md, loss_curves.png, val_loss.png, profile.png

Both arms of a seed share everything but the model's multipliers: data (same tokenizer, sources,
order), token budget, schedule, optimizer, seed. Re-running the command resumes: finished runs
are kept, interrupted ones continue from their newest checkpoint, scored models are not
re-scored. A plan may grow (more seeds, other evaluation settings) but a run already planned
must keep its config; a conflict is an error naming the first difference (``--force`` starts
over).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elmforge.errors import ConfigError, ElmforgeError
from elmforge.files import atomic_write_json, output_verb
from elmforge.layout import WEIGHTS, RunDir
from elmforge.locks import hold_directory
from elmforge.model.uniform import check_layer_wise, match_uniform
from elmforge.progress import Report, say
from elmforge.study.config import LwsStudyConfig
from elmforge.study.evaluation import (
    EvalSettings,
    EvaluationCache,
    check_zero_shot_request,
    evaluate_model_dir,
    heldout_texts,
    settings_for,
)
from elmforge.train.config import RunConfig

VERB = "study lws"
PLAN_FILE = "study.json"
PLAN_FORMAT = "elmforge-study-lws-1"
ARMS = ("lws", "uniform")


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def run_finished(run_dir: Path) -> bool:
    """A run is finished once its final model exists (written last, atomically)."""
    return (RunDir(run_dir).final / WEIGHTS).is_file()


def evaluation_settings(plan: dict[str, Any]) -> EvalSettings:
    values = dict(plan["evaluation"])
    values["tasks"] = tuple(values["tasks"]) if values.get("tasks") else None
    return EvalSettings(**values)


# -- the plan -------------------------------------------------------------------------------------
def build_plan(config: LwsStudyConfig, tokenizer_spec: str, vocab_size: int) -> dict[str, Any]:
    """Both arms and every run's resolved pretraining config (a JSON-able mapping)."""
    base = config.run_config()
    study = config.study
    match = match_uniform(base.model.name, base.model.shape, study.tolerance, vocab_size)
    lws_model = {**dataclasses.asdict(base.model), "vocab_size": vocab_size}
    models = {"lws": lws_model, "uniform": {**lws_model, "shape": match.shape}}
    runs = []
    for index in range(study.seeds):
        for arm in ARMS:
            values = base.to_dict()
            values["model"] = copy.deepcopy(models[arm])
            values["seed"] = base.seed + index
            values["data"]["seed"] = base.data.seed + index
            values["data"]["tokenizer"] = tokenizer_spec
            resolved = RunConfig.from_dict(values, source=f"{arm} arm, seed {base.seed + index}")
            name = run_name(arm, base.seed + index)
            runs.append({"name": name, "arm": arm, "seed": base.seed + index,
                         "run_dir": f"runs/{name}", "config": resolved.to_dict()})  # fmt: skip
    settings = settings_for(
        base.seq_len, study.eval_documents, study.data_dir, study.tasks, study.limit,
        study.allow_split_fallback,
    )  # fmt: skip
    return {
        "format": PLAN_FORMAT,
        "study": dataclasses.asdict(study),
        "tokenizer": tokenizer_spec,
        "arms": {
            "lws": {"parameters": match.lws_parameters, "model": models["lws"]},
            "uniform": {"parameters": match.uniform_parameters, "model": models["uniform"]},
        },
        "match": {
            "tolerance": study.tolerance,
            "relative_gap": match.relative_gap,
            "query_heads": match.query_heads,
            "ffn_dim": match.ffn_dim,
            "ffn_dim_divisor": match.ffn_dim_divisor,
        },
        "evaluation": dataclasses.asdict(settings),
        "runs": runs,
    }


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    return None if old == new else f"{where}: {old!r} -> {new!r}"


def check_plan_conflicts(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """A run planned before must keep its config; anything else may change."""
    before = {run["name"]: run["config"] for run in old.get("runs", [])}
    for run in new["runs"]:
        if run["name"] in before:
            difference = _first_difference(before[run["name"]], run["config"], run["name"])
            if difference:
                raise ConfigError(
                    f"{path}: holds a study whose run {difference}; re-run with the same config "
                    "to resume, or pass --force to start the study over"
                )


def read_plan(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ElmforgeError(f"{path}: not valid JSON (a damaged study plan)") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ElmforgeError(f"{path}: not an elmforge study plan ({PLAN_FORMAT})")
    return plan


# -- output directory -------------------------------------------------------------------------------
def _prepare_directory(out_dir: Path, force: bool) -> bool:
    """Make ``out_dir`` ours; True when it was created now (removed again if planning fails)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ElmforgeError(f"{out_dir}: exists and is not a directory")
    from elmforge.study.common import claim_study_dir

    resuming = output_verb(out_dir) == VERB and not force
    created = not resuming and (not out_dir.exists() or not any(out_dir.iterdir()) or force)
    claim_study_dir(out_dir, VERB, restart=force)
    return created


def _jobs_and_slots(config: LwsStudyConfig, pending: int) -> tuple[list[dict[str, str]], int]:
    """Environment per parallel slot, and CPU threads per run (0 on GPUs)."""
    from elmforge.study.runner import usable_cpus

    jobs = config.study.jobs
    device = config.train.device
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            slots = count if jobs == "auto" else min(jobs, count)
            return [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(max(1, min(slots, pending)))], 0
    cpus = usable_cpus()
    threads = config.train.num_threads
    if jobs == "auto":
        threads = threads or 1
        jobs = max(1, cpus // threads)
    elif not threads:
        threads = max(1, cpus // jobs)
    jobs = max(1, min(jobs, pending))
    limits = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return [dict(limits) for _ in range(jobs)], threads


# -- the study ------------------------------------------------------------------------------------
def run_lws_study(
    config: LwsStudyConfig,
    out_dir: str | Path,
    force: bool = False,
    report: Report = say,
    command: str | None = None,
) -> dict[str, Any]:
    """Plan, train (resuming), score and report; returns the report (``report.json``)."""
    out_dir = Path(out_dir)
    base = config.run_config()
    # Cheap checks first: nothing is created for a config that cannot be studied.
    check_layer_wise(base.model.name, base.model.shape)
    study = config.study
    check_zero_shot_request(
        settings_for(base.seq_len, 1, study.data_dir, study.tasks, study.limit,
                     study.allow_split_fallback)
    )  # fmt: skip
    created = _prepare_directory(out_dir, force)
    with hold_directory(out_dir, "study lws"):  # two studies would corrupt each other's runs
        return _run_study(config, out_dir, created, report, command)


def _run_study(
    config: LwsStudyConfig, out_dir: Path, created: bool, report: Report, command: str | None
) -> dict[str, Any]:
    from elmforge.data.tokenizer_choice import resolve_tokenizer
    from elmforge.study.report import write_lws_report
    from elmforge.study.runner import Job, run_jobs

    base = config.run_config()
    plan_path = out_dir / PLAN_FILE
    try:
        tokenizer, spec = resolve_tokenizer(base.data, out_dir / "tokenizer", report=report)
        if Path(spec).exists():  # runs may start elsewhere: a path must not be relative
            spec = str(Path(spec).resolve())
        vocab_size = base.model_config(tokenizer).vocab_size
        plan = build_plan(config, spec, vocab_size)
    except ElmforgeError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    old = read_plan(plan_path)
    if old is not None:
        check_plan_conflicts(old, plan, plan_path)
    atomic_write_json(plan_path, plan)
    arms = plan["arms"]
    report(
        f"[study] LWS {arms['lws']['parameters']:,} parameters, uniform "
        f"{arms['uniform']['parameters']:,} ({plan['match']['relative_gap']:+.2%}); "
        f"{config.study.seeds} seed(s) x 2 arms into {out_dir}"
    )

    pending = [run for run in plan["runs"] if not run_finished(out_dir / run["run_dir"])]
    if len(pending) < len(plan["runs"]):
        report(f"[study] {len(plan['runs']) - len(pending)} run(s) already finished")
    if pending:
        slots, threads = _jobs_and_slots(config, len(pending))
        report(
            f"[study] training {len(pending)} run(s), {len(slots)} at a time"
            + (f", {threads} thread(s) each" if threads else "")
        )
        jobs = []
        for run in pending:
            argv = [sys.executable, "-m", "elmforge.study.job", str(out_dir), run["name"]]
            if threads:
                argv += ["--threads", str(threads)]
            jobs.append(Job(
                name=run["name"], command=argv, log=out_dir / "logs" / f"{run['name']}.log",
                run_dir=out_dir / run["run_dir"],
                max_steps=run["config"]["schedule"]["max_steps"],
            ))  # fmt: skip
        run_jobs(jobs, slots, report)

    evaluations = {
        run["name"]: score_run(out_dir, plan, run["name"], report) for run in plan["runs"]
    }
    return write_lws_report(out_dir, plan, evaluations, report, command)


def score_run(out_dir: Path, plan: dict[str, Any], name: str, report: Report = say) -> dict:
    """The held-out scores of one run's final model (cached in ``evaluations/NAME.json``)."""
    run = next(r for r in plan["runs"] if r["name"] == name)
    config = RunConfig.from_dict(run["config"], source=f"{out_dir / PLAN_FILE}: {name}")
    settings = evaluation_settings(plan)
    cache = EvaluationCache(out_dir / "evaluations" / f"{name}.json")
    final = RunDir(out_dir / run["run_dir"]).final
    texts: list[str] = []

    def texts_once() -> list[str]:
        if not texts:
            texts.extend(heldout_texts(config.data.sources_for("validation"), settings.documents))
        return texts

    return evaluate_model_dir(final, _LazyTexts(texts_once), settings, cache, report, label=name)


class _LazyTexts:
    """The held-out documents, read only when a model actually has to be scored."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())
