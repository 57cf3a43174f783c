"""Test data for tests/evaluate: small task files in each benchmark's real schema and a tokenizer
trained on them, written under pytest's tmp dirs (nothing here needs ../shared)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

WORDS = [
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "river",
    "stone",
    "bird",
    "fish",
    "apple",
    "water",
    "light",
    "green",
    "blue",
    "red",
    "small",
    "big",
    "fast",
    "slow",
    "warm",
    "cold",
    "plant",
    "energy",
    "food",
    "animal",
    "house",
    "city",
    "road",
    "rain",
    "snow",
    "wind",
    "cloud",
    "star",
    "earth",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_task_rows(seed: int = 0, n: int = 8) -> dict[str, dict[str, list[dict]]]:
    """{dataset dir: {file stem: rows}} in the Hugging Face schemas lm-eval reads."""
    rng = random.Random(seed)
    letters = ["A", "B", "C", "D"]
    arc = []
    for i in range(n):
        k = 3 if i == 0 else 4  # one three-way question with numeric labels, as in ARC
        labels = [str(j + 1) for j in range(k)] if i == 0 else letters[:k]
        arc.append(
            {
                "id": f"q{i}",
                "question": _sentence(rng, 6) + "?",
                "choices": {
                    "text": [_sentence(rng, rng.randint(1, 4)) for _ in range(k)],
                    "label": labels,
                },
                "answerKey": labels[i % k],
            }
        )
    boolq = [
        {"question": _sentence(rng, 5), "passage": _sentence(rng, 20), "idx": i, "label": i % 2}
        for i in range(n)
    ]
    winogrande = [
        {
            "sentence": f"The {rng.choice(WORDS)} saw the {rng.choice(WORDS)} because _ was {rng.choice(WORDS)}.",
            "option1": rng.choice(WORDS),
            "option2": rng.choice(WORDS),
            "answer": str(1 + i % 2),
        }
        for i in range(n)
    ]
    piqa = [
        {
            "goal": _sentence(rng, 6),
            "sol1": _sentence(rng, 5),
            "sol2": _sentence(rng, 7),
            "label": i % 2,
        }
        for i in range(n)
    ]
    hellaswag = [
        {
            "ind": i,
            "activity_label": rng.choice(WORDS).capitalize(),
            "ctx_a": _sentence(rng, 8) + ".",
            "ctx_b": _sentence(rng, 3),
            "ctx": "",
            "endings": [_sentence(rng, rng.randint(2, 6)) + "." for _ in range(4)],
            "source_id": f"s{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
        for i in range(n)
    ]
    truthfulqa = [
        {
            "question": _sentence(rng, 6) + "?",
            "mc1_targets": {"choices": [_sentence(rng, 3) for _ in range(3)], "labels": [1, 0, 0]},
            "mc2_targets": {
                "choices": [_sentence(rng, 3) for _ in range(4)],
                "labels": [1, 1, 0, 0],
            },
        }
        for _ in range(n)
    ]

    def mmlu(subject: str, count: int) -> list[dict]:
        return [
            {
                "question": _sentence(rng, 7) + "?",
                "subject": subject,
                "choices": [_sentence(rng, 2) for _ in range(4)],
                "answer": i % 4,
            }
            for i in range(count)
        ]

    return {
        "arc_easy": {"test": arc},
        "boolq": {"validation.super_glue": boolq},
        "winogrande": {"validation": winogrande},
        "piqa": {"validation": piqa},
        "hellaswag": {"validation": hellaswag},
        "truthfulqa": {"validation_mc": truthfulqa},
        "mmlu": {
            "test": mmlu("anatomy", 4) + mmlu("astronomy", 5),
            "dev": mmlu("anatomy", 5) + mmlu("astronomy", 5),
        },
    }


def write_task_dir(root: Path, seed: int = 0, n: int = 8) -> Path:
    for dataset, splits in make_task_rows(seed, n).items():
        for stem, rows in splits.items():
            _write_jsonl(root / dataset / f"{stem}.jsonl", rows)
    return root


def corpus_strings(root: Path) -> list[str]:
    texts = []
    for path in sorted(root.rglob("*.jsonl")):
        texts += path.read_text(encoding="utf-8").splitlines()
    return texts + ["Question: Answer: yes no yes no"] * 50


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """A small byte-level BPE (bos added like LLaMA-2's) trained in well under a second."""
    from elmforge.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size)


def shared_dir() -> Path | None:
    """``../shared`` beside the repository (or $ELMFORGE_SHARED), if present."""
    env = os.environ.get("ELMFORGE_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared"
    return path.resolve() if (path / "data").is_dir() else None


# lm-eval's own config of each task the direct runs use (relative to lm_eval/tasks/).
ORIGINAL_TASK_YAMLS = {
    "arc_easy": "arc/arc_easy.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "winogrande": "winogrande/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "mmlu_anatomy": "mmlu/default/mmlu_anatomy.yaml",
}
SPLIT_ROLES = ("training_split", "validation_split", "test_split", "fewshot_split")


def direct_lm_eval(
    model,
    tokenizer,
    task_splits: dict[str, dict[str, tuple[str, Path]]],
    config_dir: Path,
    num_fewshot: int | None = None,
    limit: int | None = None,
) -> dict:
    """``lm_eval.simple_evaluate`` on local files, set up by hand without elmforge's code.

    ``task_splits`` maps a task to ``{split role: (split name, file)}``; each task gets a YAML
    that includes lm-eval's original config and reads the files with the ``json`` builder.
    """
    import lm_eval
    import lm_eval.tasks
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks_root = Path(lm_eval.tasks.__file__).parent
    config_dir.mkdir(parents=True, exist_ok=True)
    for task, roles in task_splits.items():
        body = {
            "include": str(tasks_root / ORIGINAL_TASK_YAMLS[task]),
            "task": task,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {split: str(path) for split, path in roles.values()},
                "cache_dir": str(config_dir / "hf_cache"),
            },
            **{role: roles[role][0] if role in roles else None for role in SPLIT_ROLES},
        }
        (config_dir / f"{task}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, add_bos_token=True)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(task_splits),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=TaskManager(include_path=str(config_dir), include_defaults=False),
    )


def direct_metric(raw: dict, task: str, metric: str) -> float | None:
    return raw["results"][task].get(f"{metric},none")
