"""lm-evaluation-harness glue: its task index, offline task data, one ``simple_evaluate`` call,
and its output in elmforge's results form.

We hand lm-eval the in-memory model (``HFLM(pretrained=model, tokenizer=tokenizer,
add_bos_token=True)``: Apple scored OpenELM with the bos token added) and let it do all prompt
building and scoring; nothing here computes a task metric.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from elmforge.errors import ElmforgeError, OptionError, first_line
from elmforge.evaluate.local_data import TaskDataPlan, plan_task_data, write_override_configs
from elmforge.evaluate.suites import fewshot_count
from elmforge.modeldir.loading import context_length_of

if TYPE_CHECKING:
    from elmforge.evaluate.request import EvalRequest


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
            raise OptionError(
                "data_dir",
                f"lm-eval task '{name}' is defined in Python; it cannot read a {{option}}",
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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub accepts a connection (one try, ``timeout`` seconds). Without
    a network, huggingface_hub retries for about 45 s before datasets gives up with a traceback;
    this answers at once. Behind a proxy the direct probe would mislead, so it is not made."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _no_data_message(what: str, reason: str) -> str:
    return (
        f"{what}: {reason}; pass --data-dir DIR with local copies (DIR/<dataset>/<split>.jsonl, "
        "see docs/evaluate.md)"
    )


def check_cached(leaves: Collection[str]) -> None:
    """Offline without a data directory, a task whose dataset was never downloaded cannot run:
    say so before lm-eval tries (and retries). A dataset with a cache entry may still lack a
    split; that is reported when lm-eval reads it."""
    import datasets.config
    import huggingface_hub.constants

    index = default_task_manager().task_index
    for task in leaves:
        path = (index[task].cfg or {}).get("dataset_path")
        if not isinstance(path, str) or Path(path).exists():
            continue
        cached = (
            Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___"),
            Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}",
        )
        if not any(p.exists() for p in cached):
            raise ElmforgeError(
                _no_data_message(
                    f"task {task}",
                    f"its dataset {path} is not in the local cache and the Hugging Face hub is "
                    "unreachable (no network or HF_HUB_OFFLINE)",
                )
            )


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


def check_task_data(
    runs: dict[int | None, list[str]], data_dir: str | Path | None, allow_split_fallback: bool
) -> None:
    """Every task name is in lm-eval's index and, with ``data_dir``, every file it needs is there
    (cheap: no model, no data read), so a typo or a missing file is reported before slow work."""
    index = default_task_manager().task_index if runs else {}
    for shots, names in runs.items():
        closure = expand_tasks(names, local_data=data_dir is not None)
        if data_dir is None:
            continue
        for task in closure.leaves:
            config = index[task].cfg or {}
            shots_of_task = fewshot_count(config, shots)
            plan_task_data(task, config, Path(data_dir), shots_of_task, allow_split_fallback)


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
    lm: Any, task_names: Sequence[str], num_fewshot: int | None, request: EvalRequest
) -> tuple[dict[str, Any], dict[str, TaskDataPlan]]:
    """One ``lm_eval.simple_evaluate`` call; returns lm-eval's raw output and the data plans."""
    from lm_eval import simple_evaluate

    data_dir = request.data_dir
    closure = expand_tasks(task_names, local_data=data_dir is not None)
    with contextlib.ExitStack() as stack:
        plans: dict[str, TaskDataPlan] = {}
        if data_dir is not None:
            data_dir = Path(data_dir)
            if not data_dir.is_dir():
                raise OptionError("data_dir", f"{{option}} {data_dir}: no such directory")
            stack.enter_context(offline_hub())
            config_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="elmeval-")))
            task_manager, plans = _local_task_manager(
                closure, data_dir, num_fewshot, request.allow_split_fallback, config_dir
            )
        else:
            task_manager = default_task_manager()
            online = hub_reachable()
            if not online:
                check_cached(closure.leaves)
                stack.enter_context(offline_hub())  # the local datasets cache only, no retries
        stack.enter_context(quiet_lm_eval(request.verbose))
        try:
            raw = simple_evaluate(
                model=lm,
                tasks=list(task_names),
                num_fewshot=num_fewshot,
                limit=request.limit,
                task_manager=task_manager,
                log_samples=request.log_samples,
            )
        except ConnectionError as err:  # datasets' "Couldn't reach ...", the hub's offline errors
            if data_dir is not None:
                raise
            reason = "the hub refused it" if online else "no network and not in the local cache"
            raise ElmforgeError(
                _no_data_message(
                    f"task data of {', '.join(task_names)}", f"{reason} ({first_line(err)})"
                )
            ) from None
    return raw, plans


class Scores(NamedTuple):
    results: dict[str, Any]
    """task or group -> lm-eval's metrics, ``n``, ``num_fewshot`` and the splits scored."""
    task_versions: dict[str, Any]
    """task -> the version of its lm-eval config."""
    samples: dict[str, list]
    """task -> lm-eval's per-document records (with ``log_samples``)."""


def score_tasks(model: Any, tokenizer: Any, request: EvalRequest) -> Scores:
    """Every task of ``request``, one ``simple_evaluate`` call per few-shot count (empty on a
    torchrun process whose ``LOCAL_RANK`` is not 0: lm-eval returns nothing there)."""
    lm = build_lm(model, tokenizer, request.batch_size, max_length=request.context_length)
    scores = Scores({}, {}, {})
    for shots, names in request.runs.items():
        raw, plans = run_lm_eval(lm, names, shots, request)
        if raw is None:  # under torchrun lm-eval returns results on LOCAL_RANK 0 only (the
            continue  # caller shares them; every process has run the same forward passes)
        scores.results.update(collect_results(raw, plans))
        scores.task_versions.update(raw.get("versions") or {})
        scores.samples.update(raw.get("samples") or {})
    return scores


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
