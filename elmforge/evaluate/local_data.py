"""Offline task data: point lm-eval's own task configs at local JSON Lines files.

A data directory is laid out as ``DIR/<dataset>/<split>.jsonl`` (the layout of
``shared/data/eval/``), each file in the Hugging Face ``datasets`` schema the task reads. We never
rewrite a task's prompts or metrics: for every lm-eval task that a run needs we generate a
one-line YAML that ``include``s lm-eval's original config and overrides only where the data comes
from (``custom_dataset`` below) and which splits exist. lm-eval's ``TaskManager`` then builds the
tasks from those YAMLs exactly as it would from the originals.

The split a task scores is lm-eval's: ``test_split`` if the config has one, else
``validation_split``; few-shot examples come from ``fewshot_split``, else the training split,
else validation. A split the run needs whose file is missing is an error naming the task and the
exact path expected, unless ``allow_split_fallback`` is set: then we apply lm-eval's own rule for
a dataset that lacks the split (score validation when there is no test split; draw few-shot
examples from validation, never the scored document itself, when there is no training split)
and record it in the results.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elmforge.errors import DataError, ElmforgeError

# Keys of an lm-eval task config that name a split.
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@dataclass(frozen=True)
class LocalDataset:
    """Where one Hugging Face dataset (path + config name) lives in a data directory."""

    directory: str
    # split -> candidate file stems in DIR/<directory>/, the first that exists wins.
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Fields the task reads; a file without them is reported before lm-eval fails obscurely.
    required_fields: tuple[str, ...] = ()
    # MMLU ships as one file for all subjects: keep the rows whose field equals the config name.
    subject_field: str | None = None
    # Name of a schema adapter in ADAPTERS, applied when the file has the adapter's source schema.
    adapter: str | None = None

    def candidates(self, split: str) -> tuple[str, ...]:
        return self.split_files.get(split, (split,))


# (last component of lm-eval's dataset_path, dataset_name) -> local directory. Keyed on the last
# path component so a dataset that moves between hub organisations keeps its directory.
KNOWN_DATASETS: dict[tuple[str, str | None], LocalDataset] = {
    ("ai2_arc", "ARC-Easy"): LocalDataset(
        "arc_easy", required_fields=("question", "choices", "answerKey")
    ),
    ("ai2_arc", "ARC-Challenge"): LocalDataset(
        "arc_challenge", required_fields=("question", "choices", "answerKey")
    ),
    # lm-eval's boolq reads the super_glue schema (int `label`); google/boolq's own files have a
    # bool `answer` instead, which the adapter maps to `label`.
    ("super_glue", "boolq"): LocalDataset(
        "boolq",
        split_files={
            "train": ("train.super_glue", "train"),
            "validation": ("validation.super_glue", "validation"),
        },
        required_fields=("passage", "question", "label"),
        adapter="boolq_answer_to_label",
    ),
    ("hellaswag", None): LocalDataset(
        "hellaswag", required_fields=("activity_label", "ctx_a", "ctx_b", "endings", "label")
    ),
    ("piqa", None): LocalDataset("piqa", required_fields=("goal", "sol1", "sol2", "label")),
    ("sciq", None): LocalDataset(
        "sciq",
        required_fields=(
            "question",
            "distractor1",
            "distractor2",
            "distractor3",
            "correct_answer",
            "support",
        ),
    ),
    ("winogrande", "winogrande_xl"): LocalDataset(
        "winogrande", required_fields=("sentence", "option1", "option2", "answer")
    ),
    ("truthful_qa", "multiple_choice"): LocalDataset(
        "truthfulqa",
        split_files={"validation": ("validation_mc",)},
        required_fields=("question", "mc1_targets", "mc2_targets"),
    ),
    ("truthful_qa", "generation"): LocalDataset(
        "truthfulqa",
        split_files={"validation": ("validation_generation",)},
        required_fields=("question", "best_answer", "correct_answers", "incorrect_answers"),
    ),
    ("openbookqa", "main"): LocalDataset(
        "openbookqa", required_fields=("question_stem", "choices", "answerKey")
    ),
    ("race", "high"): LocalDataset("race", required_fields=("article", "problems")),
    ("crows_pairs_multilingual", "english"): LocalDataset(
        "crows_pairs", required_fields=("sent_more", "sent_less")
    ),
}
# MMLU: every subject config of cais/mmlu (and hails/mmlu_no_train) reads the one mmlu/ directory.
MMLU_DATASET_NAMES = ("mmlu", "mmlu_no_train")
MMLU_LOCAL = LocalDataset(
    "mmlu", required_fields=("question", "subject", "choices", "answer"), subject_field="subject"
)


def local_dataset_for(dataset_path: str | None, dataset_name: str | None) -> LocalDataset:
    """The local layout of an lm-eval dataset; unknown datasets use ``<basename>[_<name>]``."""
    base = (dataset_path or "").rstrip("/").rsplit("/", 1)[-1]
    if base in MMLU_DATASET_NAMES:
        return MMLU_LOCAL
    known = KNOWN_DATASETS.get((base, dataset_name))
    if known is not None:
        return known
    return LocalDataset(f"{base}_{dataset_name}" if dataset_name else base)


def _adapt_boolq_answer_to_label(row: dict[str, Any], index: int) -> dict[str, Any]:
    if "label" in row or "answer" not in row:
        return row
    return {**row, "label": int(bool(row["answer"])), "idx": row.get("idx", index)}


ADAPTERS = {"boolq_answer_to_label": _adapt_boolq_answer_to_label}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as err:  # nested thousands deep: Recursion
                    raise DataError(
                        f"{path}: line {line_number} is not valid JSON ({getattr(err, 'msg', err)})"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {line_number} is not a JSON object")
                rows.append(row)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return rows


def load_local_dataset(
    data_files: dict[str, str],
    required_fields: list[str] | None = None,
    subject_field: str | None = None,
    subject: str | None = None,
    adapter: str | None = None,
    **_task_metadata: Any,
):
    """lm-eval ``custom_dataset`` hook: a ``DatasetDict`` of the local split files.

    lm-eval calls it with the task's ``dataset_kwargs`` (ours) plus its ``metadata``, hence the
    catch-all. Rows are read with ``json`` so a bad line is reported with its file and line
    number, then handed to ``datasets`` unchanged (after the optional schema adapter).
    """
    import datasets

    splits = {}
    for split, file_name in data_files.items():
        path = Path(file_name)
        rows = _read_jsonl(path)
        if adapter is not None:
            rows = [ADAPTERS[adapter](row, i) for i, row in enumerate(rows)]
        if subject_field is not None and subject not in (None, "all"):
            rows = [row for row in rows if row.get(subject_field) == subject]
            if not rows:
                raise DataError(f"{path}: no rows with {subject_field} == {subject!r}")
        if not rows:
            raise DataError(f"{path}: the file has no rows")
        missing = [name for name in required_fields or () if name not in rows[0]]
        if missing:
            raise DataError(
                f"{path}: rows lack the field(s) {', '.join(missing)} that the task reads "
                f"(found: {', '.join(rows[0])})"
            )
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


@dataclass
class TaskDataPlan:
    """How one leaf task reads local data: the YAML overrides and what was chosen."""

    task: str
    eval_split: str
    fewshot_split: str | None
    files: dict[str, str]
    fallbacks: list[str]
    overrides: dict[str, Any]


def plan_task_data(
    task: str,
    config: dict[str, Any],
    data_dir: Path,
    num_fewshot: int,
    allow_split_fallback: bool = False,
) -> TaskDataPlan:
    """Decide which local files ``task`` (whose resolved lm-eval config is ``config``) reads."""
    local = local_dataset_for(config.get("dataset_path"), config.get("dataset_name"))
    directory = data_dir / local.directory

    def existing_file(split: str) -> Path | None:
        for stem in local.candidates(split):
            path = directory / f"{stem}.jsonl"
            if path.is_file():
                return path
        return None

    def expected(split: str) -> Path:
        return directory / f"{local.candidates(split)[0]}.jsonl"

    splits = {key: config.get(key) for key in SPLIT_KEYS}
    files: dict[str, Path] = {}
    for split in dict.fromkeys(s for s in splits.values() if s):
        path = existing_file(split)
        if path is not None:
            files[split] = path

    overrides: dict[str, Any] = {}
    fallbacks: list[str] = []

    def drop(key: str) -> None:
        overrides[key] = None
        splits[key] = None

    def missing(split: str, role: str) -> ElmforgeError:
        hint = "" if allow_split_fallback else " (or pass {option})"
        return DataError(
            f"task {task}: the {role} split '{split}' is missing: expected {expected(split)}{hint}",
            option="allow_split_fallback",
        )

    # The scored split.
    eval_split = splits["test_split"] or splits["validation_split"]
    if eval_split is None:
        raise ElmforgeError(
            f"task {task}: its lm-eval config has neither a test nor validation split"
        )
    if eval_split not in files:
        # A config without a validation split (MMLU) may still have one on disk.
        fallback = splits["validation_split"] or "validation"
        fallback_path = existing_file(fallback)
        if allow_split_fallback and eval_split == splits["test_split"] and fallback_path:
            fallbacks.append(f"scored '{fallback}': no {expected(eval_split)}")
            drop("test_split")
            files[fallback] = fallback_path
            overrides["validation_split"] = splits["validation_split"] = fallback
            eval_split = fallback
        else:
            raise missing(eval_split, "evaluation")

    # The few-shot source, needed only when examples are drawn.
    fewshot_split = None
    if num_fewshot > 0:
        wanted = splits["fewshot_split"] or splits["training_split"] or splits["validation_split"]
        if wanted is not None and wanted in files:
            fewshot_split = wanted
        elif allow_split_fallback and splits["validation_split"] in files:
            fewshot_split = splits["validation_split"]
            fallbacks.append(
                f"few-shot examples from '{fewshot_split}': no {expected(wanted or 'train')}"
            )
            drop("fewshot_split")
            drop("training_split")
        else:
            raise missing(wanted or "train", "few-shot")

    # Splits the run does not need and that are absent locally are switched off, so lm-eval
    # does not look for them (it builds its few-shot sampler eagerly, even at 0 shots).
    for key in SPLIT_KEYS:
        if splits[key] is not None and splits[key] not in files:
            drop(key)
    used = {s for s in splits.values() if s}
    data_files = {split: str(path) for split, path in files.items() if split in used}

    dataset_kwargs: dict[str, Any] = {"data_files": data_files}
    if local.required_fields:
        dataset_kwargs["required_fields"] = list(local.required_fields)
    if local.subject_field:
        dataset_kwargs["subject_field"] = local.subject_field
        dataset_kwargs["subject"] = config.get("dataset_name")
    if local.adapter:
        dataset_kwargs["adapter"] = local.adapter
    overrides.update(
        {
            "dataset_path": str(directory),
            "dataset_name": None,
            "dataset_kwargs": dataset_kwargs,
        }
    )
    return TaskDataPlan(
        task=task,
        eval_split=eval_split,
        fewshot_split=fewshot_split,
        files={split: data_files[split] for split in data_files},
        fallbacks=fallbacks,
        overrides=overrides,
    )


def write_override_configs(
    out_dir: Path,
    task_yamls: dict[str, Path],
    group_yamls: dict[str, Path],
    plans: Iterable[TaskDataPlan],
) -> None:
    """Write one YAML per task (original config + data overrides) and per group (as is).

    ``custom_dataset`` is given as a ``!function`` reference, which lm-eval resolves by import.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    loader_ref = f"{load_local_dataset.__module__}.{load_local_dataset.__name__}"
    for plan in plans:
        body = {"include": str(task_yamls[plan.task]), "task": plan.task, **plan.overrides}
        text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
        text += f"custom_dataset: !function {loader_ref}\n"
        (out_dir / f"task__{plan.task}.yaml").write_text(text, encoding="utf-8")
    for name, path in group_yamls.items():
        safe = name.replace("/", "_")
        (out_dir / f"group__{safe}.yaml").write_text(
            yaml.safe_dump({"include": str(path)}, sort_keys=False), encoding="utf-8"
        )
