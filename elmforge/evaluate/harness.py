"""Benchmark evaluation on EleutherAI's lm-evaluation-harness, the engine the paper used.

We hand lm-eval the in-memory model (``HFLM(pretrained=model, tokenizer=tokenizer,
add_bos_token=True)``: Apple scored OpenELM with the bos token added) and let it do all prompt
building and scoring; nothing here computes a task metric. What this module adds: the paper's
suites (with their per-task few-shot counts), offline data directories (``local_data``),
and results in one stable JSON/Markdown form.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import functools
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError
from elmforge.evaluate.loading import context_length_of, load_model_for_eval
from elmforge.evaluate.local_data import TaskDataPlan, plan_task_data, write_override_configs
from elmforge.evaluate.suites import SUITES, fewshot_count, plan_fewshot_runs


@functools.lru_cache(maxsize=1)
def default_task_manager() -> Any:
    """lm-eval's index of its own task configs (built once per process: it takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@dataclass
class TaskClosure:
    """Everything a list of requested names expands to in lm-eval's index."""

    leaves: dict[str, Path]  # leaf task -> its YAML
    groups: dict[str, Path]  # group -> its YAML


def expand_tasks(
    names: Sequence[str], task_manager: Any = None, local_data: bool = True
) -> TaskClosure:
    """The leaf tasks and groups behind ``names``; an unknown name is a one-line error, and so,
    with ``local_data``, is a task defined in Python (its data cannot be redirected)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    task_manager = task_manager or default_task_manager()
    index = task_manager.task_index
    closure = TaskClosure(leaves={}, groups={})

    def visit(name: str, requested: bool) -> None:
        entry = index.get(name)
        if entry is None:
            if requested:
                close = difflib.get_close_matches(name, index.keys(), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ElmforgeError(f"unknown lm-eval task '{name}'{hint}")
            return
        if entry.kind == Kind.TAG:
            for task in sorted(entry.tags):
                visit(task, False)
        elif entry.kind == Kind.GROUP:
            if name in closure.groups:
                return
            closure.groups[name] = entry.yaml_path
            members = load_yaml(entry.yaml_path, resolve_func=False).get("task") or []
            for member in members if isinstance(members, list) else [members]:
                visit_member(member)
        elif entry.kind == Kind.TASK or not local_data:
            closure.leaves[name] = entry.yaml_path
        else:
            raise ElmforgeError(
                f"lm-eval task '{name}' is defined in Python; it cannot read a --data-dir"
            )

    def visit_member(member: Any) -> None:
        if isinstance(member, str):
            visit(member, False)
        elif isinstance(member, dict) and "task" in member and isinstance(member["task"], str):
            visit(member["task"], False)
        elif isinstance(member, dict) and isinstance(member.get("task"), list):
            for sub in member["task"]:
                visit_member(sub)

    for name in names:
        visit(name, True)
    return closure


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """No hub access (also for libraries already imported, which read the flags at import)."""
    saved_env = {key: os.environ.get(key) for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({key: "1" for key in saved_env})
    patched: list[tuple[Any, str, Any]] = []
    for module_name, attrs in (
        ("datasets.config", ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")),
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
    ):
        module = __import__(module_name, fromlist=["_"])
        for attr in attrs:
            if hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_lm_eval(verbose: bool) -> Iterator[None]:
    """lm-eval logs a warning per task config detail; keep the terminal for progress bars."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def validate_request(
    tasks: Sequence[str] | None,
    suite: str | None,
    num_fewshot: int | None,
    limit: int | None,
    data_dir: str | Path | None,
    allow_split_fallback: bool,
    perplexity_data: Any,
    batch_size: int = 1,
) -> dict[int | None, list[str]]:
    """Check names, numbers and local data files; return the runs by few-shot count.

    Cheap (no model, no data read), so a typo or a missing file is reported before any slow work.
    """
    runs = plan_fewshot_runs(tasks, suite, num_fewshot)
    if not runs and perplexity_data is None:
        raise ElmforgeError("nothing to evaluate: give --suite, --tasks or --perplexity")
    if limit is not None and limit < 1:
        raise ElmforgeError(f"--limit {limit}: must be >= 1")
    if batch_size < 1:
        raise ElmforgeError(f"--batch-size {batch_size}: must be >= 1")
    if data_dir is not None and runs and not Path(data_dir).is_dir():
        raise ElmforgeError(f"--data-dir {data_dir}: no such directory")
    index = default_task_manager().task_index if runs else {}
    for shots, names in runs.items():
        closure = expand_tasks(names, local_data=data_dir is not None)
        if data_dir is None:
            continue
        for task in closure.leaves:
            config = index[task].cfg or {}
            task_shots = fewshot_count(config, shots)
            plan_task_data(task, config, Path(data_dir), task_shots, allow_split_fallback)
    return runs


def build_lm(model: Any, tokenizer: Any, batch_size: int, max_length: int | None = None) -> Any:
    """lm-eval's HF wrapper around the in-memory model, with the settings Apple used."""
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval(verbose=False):
        return HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            add_bos_token=True,
            max_length=max_length or context_length_of(model),
            backend="causal",
        )


def _local_task_manager(
    closure: TaskClosure,
    data_dir: Path,
    num_fewshot: int | None,
    allow_split_fallback: bool,
    config_dir: Path,
) -> tuple[Any, dict[str, TaskDataPlan]]:
    from lm_eval.tasks import TaskManager

    index = default_task_manager().task_index
    plans = {}
    for task in closure.leaves:
        config = index[task].cfg or {}
        shots = fewshot_count(config, num_fewshot)
        plans[task] = plan_task_data(task, config, data_dir, shots, allow_split_fallback)
    write_override_configs(config_dir, closure.leaves, closure.groups, plans.values())
    return TaskManager(include_path=str(config_dir), include_defaults=False), plans


def run_lm_eval(
    lm: Any,
    task_names: Sequence[str],
    num_fewshot: int | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    allow_split_fallback: bool = False,
    log_samples: bool = False,
    verbose: bool = False,
) -> tuple[dict[str, Any], dict[str, TaskDataPlan]]:
    """One ``lm_eval.simple_evaluate`` call; returns lm-eval's raw output and the data plans."""
    from lm_eval import simple_evaluate

    closure = expand_tasks(task_names, local_data=data_dir is not None)
    with contextlib.ExitStack() as stack:
        plans: dict[str, TaskDataPlan] = {}
        if data_dir is not None:
            data_dir = Path(data_dir)
            if not data_dir.is_dir():
                raise ElmforgeError(f"--data-dir {data_dir}: no such directory")
            stack.enter_context(offline_hub())
            config_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="elmeval-")))
            task_manager, plans = _local_task_manager(
                closure, data_dir, num_fewshot, allow_split_fallback, config_dir
            )
        else:
            task_manager = default_task_manager()
        stack.enter_context(quiet_lm_eval(verbose))
        raw = simple_evaluate(
            model=lm,
            tasks=list(task_names),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=log_samples,
        )
    return raw, plans


def _strip_filter(metrics: dict[str, Any]) -> dict[str, Any]:
    """lm-eval keys metrics as ``name,filter`` (``acc,none``); keep lm-eval's metric names."""
    out = {}
    for key, value in metrics.items():
        if key == "alias" or "," not in key:
            continue
        name, filter_name = key.split(",", 1)
        if filter_name != "none":
            name = f"{name}[{filter_name}]"
        if isinstance(value, (int, float)) or value is None:
            out[name] = None if value == "N/A" else value
    return out


def collect_results(raw: dict[str, Any], plans: dict[str, TaskDataPlan]) -> dict[str, Any]:
    """lm-eval's output as ``{task: {metric: value, ..., n, num_fewshot}}`` (groups included)."""
    results: dict[str, Any] = {}
    n_samples = raw.get("n-samples", {})
    n_shot = raw.get("n-shot", {})
    group_subtasks = raw.get("group_subtasks", {})

    def leaves_of(name: str) -> list[str]:
        children = group_subtasks.get(name)
        if children is None:
            return [name]
        return [leaf for child in children for leaf in leaves_of(child)]

    for name, metrics in raw.get("results", {}).items():
        entry = _strip_filter(metrics)
        leaves = leaves_of(name)
        entry["n"] = sum(int(n_samples.get(leaf, {}).get("effective", 0)) for leaf in leaves)
        shots = {n_shot.get(leaf) for leaf in leaves if leaf in n_shot}
        entry["num_fewshot"] = shots.pop() if len(shots) == 1 else None
        if name in group_subtasks:
            entry["subtasks"] = list(group_subtasks[name])
            leaf_plans = [plans[leaf] for leaf in leaves if leaf in plans]
            splits = {plan.eval_split for plan in leaf_plans}
            if len(splits) == 1:
                entry["split"] = splits.pop()
            notes = sorted({note for plan in leaf_plans for note in plan.fallbacks})
            if notes:
                entry["split_fallback"] = notes
        elif name in plans:
            plan = plans[name]
            entry["split"] = plan.eval_split
            if plan.fewshot_split:
                entry["fewshot_split"] = plan.fewshot_split
            if plan.fallbacks:
                entry["split_fallback"] = plan.fallbacks
        results[name] = entry
    return results


def versions() -> dict[str, str]:
    out = {}
    for dist in ("elmforge", "lm_eval", "transformers", "torch", "datasets", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def describe_model(model: Any, model_name: str | None, device: str) -> dict[str, Any]:
    from elmforge.evaluate.paper import match_paper_variant

    config = getattr(model, "config", None)
    first_param = next(iter(model.parameters()), None)
    return {
        "name": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first_param.dtype).replace("torch.", "") if first_param is not None else None,
        "device": str(device),
        "context_length": context_length_of(model),
        "paper_variant": match_paper_variant(config),
    }


def describe_tokenizer(tokenizer: Any, tokenizer_name: str | None) -> dict[str, Any]:
    return {
        "name": tokenizer_name or getattr(tokenizer, "name_or_path", None) or None,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        # Measured, not assumed: lm-eval asks for special tokens, and whether that yields the
        # bos token is up to the tokenizer's post-processor.
        "add_bos_token": adds_bos_token(tokenizer),
    }


def adds_bos_token(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: list[str] | None = None,
    suite: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    data_dir: str | Path | None = None,
    device: str | None = None,
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    *,
    allow_split_fallback: bool = False,
    perplexity_data: str | dict | None = None,
    perplexity_split: str = "validation",
    context_length: int | None = None,
    stride: int | None = None,
    log_samples: bool = False,
    tokenizer_name: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on lm-eval tasks (a suite or a list) and/or perplexity over a data source.

    Returns the dict written to ``out_dir/results.json`` (with ``results.md`` beside it):
    ``results`` maps lm-eval task (and group) names to lm-eval's metrics plus ``n`` and
    ``num_fewshot``; ``perplexity`` holds tokens, loss, perplexity and bits per byte.

    The model is moved to ``device`` (``None``: left where it is) and put in eval mode for the
    run; its device and train/eval mode are restored afterwards, so a trainer can call this
    mid-training.
    """
    from elmforge.evaluate.perplexity import perplexity_of_source
    from elmforge.evaluate.report import write_results

    runs = validate_request(
        tasks,
        suite,
        num_fewshot,
        limit,
        data_dir,
        allow_split_fallback,
        perplexity_data,
        batch_size,
    )

    original_device = next(model.parameters()).device
    if device is not None:
        model.to(device)
    else:
        device = str(original_device)
    was_training = model.training
    model.eval()
    try:
        report: dict[str, Any] = {
            "model": describe_model(model, model_name, device),
            "tokenizer": describe_tokenizer(tokenizer, tokenizer_name),
            "versions": versions(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "settings": {
                "suite": suite,
                "tasks": list(SUITES[suite]) if suite is not None else list(tasks or []),
                "num_fewshot": num_fewshot,
                "limit": limit,
                "batch_size": batch_size,
                "data_dir": str(data_dir) if data_dir is not None else None,
                "allow_split_fallback": allow_split_fallback,
            },
            "results": {},
        }
        samples: dict[str, list] = {}
        task_configs: dict[str, Any] = {}
        if runs:
            lm = build_lm(model, tokenizer, batch_size, max_length=context_length)
            for shots, names in runs.items():
                raw, plans = run_lm_eval(
                    lm,
                    names,
                    num_fewshot=shots,
                    limit=limit,
                    data_dir=data_dir,
                    allow_split_fallback=allow_split_fallback,
                    log_samples=log_samples,
                    verbose=verbose,
                )
                report["results"].update(collect_results(raw, plans))
                samples.update(raw.get("samples") or {})
                task_configs.update(raw.get("versions") or {})
            report["task_versions"] = task_configs
        if perplexity_data is not None:
            report["perplexity"] = perplexity_of_source(
                model,
                tokenizer,
                perplexity_data,
                split=perplexity_split,
                context_length=context_length,
                stride=stride,
                batch_size=batch_size,
                max_documents=limit,
            )
    finally:
        model.train(was_training)
        model.to(original_device)  # a trainer's model goes back where it was
    if out_dir is not None:
        write_results(report, Path(out_dir), samples=samples if log_samples else None)
    return report


def evaluate_checkpoint(
    path_or_name: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str | None = "auto",
    **kwargs: Any,
) -> dict[str, Any]:
    """Load a checkpoint (HF layout) and run :func:`evaluate_model` on it (the CLI's verb)."""
    # Validate the request (names, suite, data files) before the slow model load.
    validate_request(
        kwargs.get("tasks"),
        kwargs.get("suite"),
        kwargs.get("num_fewshot"),
        kwargs.get("limit"),
        kwargs.get("data_dir"),
        kwargs.get("allow_split_fallback", False),
        kwargs.get("perplexity_data"),
        kwargs.get("batch_size", 1),
    )
    from elmforge.infer.loading import find_tokenizer, local_model_dir, pick_device

    device = pick_device(device)
    tokenizer = find_tokenizer(local_model_dir(path_or_name) or path_or_name, tokenizer)
    model, tokenizer_obj = load_model_for_eval(path_or_name, tokenizer, device=device, dtype=dtype)
    kwargs.setdefault("model_name", str(path_or_name))
    kwargs.setdefault(
        "tokenizer_name", str(tokenizer) if isinstance(tokenizer, (str, Path)) else None
    )
    return evaluate_model(model, tokenizer_obj, device=device, **kwargs)


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ElmforgeError(f"{path}: no such results file") from None
    except json.JSONDecodeError as err:
        raise ElmforgeError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ElmforgeError(f"{path}: not an elmforge results.json (no 'results' object)")
    return data
