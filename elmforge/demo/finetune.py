"""The fine-tuning demo (``elmforge demo --finetune``): SFT with LoRA, then DPO, on the CPU.

It takes the ``make demo`` model (``runs/demo/averaged``, or any ``--model``), tunes it with LoRA
on LLM-Adapters' CommonSense train files where ``../shared/data/commonsense`` has them (else on a
multiple-choice set the package builds from the pydoc topics every Python ships: which topic a
passage comes from), in LLM-Adapters' prompt; then runs DPO (LoRA) on pairs built from other rows
of the same files (the right answer chosen, a wrong option rejected). It reports the llm-adapters
accuracy (CoreNet's multiple-choice scoring) of the base, SFT and DPO models, and the preference
margin (log p(chosen) - log p(rejected)) on held-aside pairs built from the test files, before and
after DPO. Everything goes to ``--out``: the two run directories (metrics.jsonl, TensorBoard,
loss.png, adapter/, final/), the evaluations, ``demo.json`` and ``demo.md``.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmforge.data.prompts import llm_adapters_prompt
from elmforge.errors import ElmforgeError
from elmforge.evaluate.llm_adapters import answer_options, available_tasks, load_task
from elmforge.files import atomic_write, atomic_write_json, atomic_write_text
from elmforge.layout import CONFIG

DEFAULT_MODELS = ("runs/demo/averaged", "runs/demo/run/final")
BUILTIN_TASK = "python-topics"
SEED = 0


@dataclass
class DemoSettings:
    out: Path
    model: str | None = None
    data_dir: str | None = None
    train_rows: int = 1200
    eval_rows: int = 50
    sft_steps: int = 150
    dpo_steps: int = 50
    # One thread: on this project's shared 2-core machines two OpenMP threads were measured 15x
    # slower per step than one (0.97 s vs 14.8 s for the demo's LoRA step under load).
    threads: int = 1


# -- data ------------------------------------------------------------------------------------------
def commonsense_dir(given: str | None) -> Path | None:
    """``given``, or the shared CommonSense copy when it holds train files."""
    from elmforge.data.tokenizer import development_paths

    if given is not None:
        return Path(given)
    for path in development_paths("commonsense"):
        if any(path.glob("*/train.json")):
            return path
    return None


def builtin_task(directory: Path) -> Path:
    """A multiple-choice set in LLM-Adapters' layout from the pydoc topics: which topic is this
    passage from? (four candidates; a stable tenth of the passages is the test split)."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    rng = random.Random(SEED)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for name in names:
        body = topics[name].split("\n", 3)[-1]
        passages = [p.strip() for p in body.split("\n\n") if 120 <= len(p.strip()) <= 500]
        for index, passage in enumerate(passages):
            options = [name, *rng.sample([n for n in names if n != name], 3)]
            rng.shuffle(options)
            answer = f"answer{options.index(name) + 1}"
            listed = " ".join(f"Answer{i + 1}: {o}" for i, o in enumerate(options))
            row = {
                "instruction": "Please choose the Python documentation topic this passage "
                f"comes from: {' '.join(passage.split())}\n\n{listed}\n\n"
                "Answer format: answer1/answer2/answer3/answer4",
                "input": "",
                "output": f"the correct answer is {answer}",
                "answer": answer,
            }
            test = zlib.crc32(f"{name}/{index}".encode()) % 10 == 0
            splits["test" if test else "train"].append(row)
    for split, rows in splits.items():
        path = directory / BUILTIN_TASK / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rows, indent=1))
    return directory


def train_rows(data_dir: Path, count: int) -> list[dict[str, Any]]:
    """A seeded sample of every task's train rows."""
    rows = []
    for path in sorted(data_dir.glob("*/train.json")):
        rows += json.loads(path.read_text(encoding="utf-8"))
    random.Random(SEED).shuffle(rows)
    return rows[:count]


def preference_pairs(rows: list[dict[str, Any]], seed: int) -> list[dict[str, str]]:
    """Prompt, the right answer (chosen) and a wrong option (rejected) for each row."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        wrong = [o for o in answer_options(row["instruction"]) if o != row["answer"]]
        if not wrong:
            continue
        pairs.append({
            "prompt": llm_adapters_prompt(row["instruction"], row.get("input", "")),
            "chosen": f"the correct answer is {row['answer']}",
            "rejected": f"the correct answer is {rng.choice(wrong)}",
        })  # fmt: skip
    return pairs


# -- the demo --------------------------------------------------------------------------------------
def pick_model(given: str | None) -> str:
    if given is not None:
        return given
    for candidate in DEFAULT_MODELS:
        if (Path(candidate) / CONFIG).is_file():
            return candidate
    raise ElmforgeError(
        f"{DEFAULT_MODELS[0]}: no model to tune; run `elmforge demo` (make demo) first or pass "
        "--model DIR"
    )


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    from elmforge.progress import quiet_transformers

    with quiet_transformers():  # no "Loading weights" bar per model load
        return _run_demo(settings)


def _run_demo(settings: DemoSettings) -> dict[str, Any]:
    from elmforge.finetune.config import FinetuneConfig
    from elmforge.finetune.trainer import FinetuneJob, finetune

    started = time.perf_counter()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    model = pick_model(settings.model)
    length = min(384, context_length(model))
    data_dir = commonsense_dir(settings.data_dir)
    source = str(data_dir) if data_dir else "built-in pydoc topics"
    if data_dir is None:
        data_dir = builtin_task(out / "data")
    tasks = available_tasks_or_builtin(data_dir)
    print(f"[demo] model {model}; data: {source} (tasks: {', '.join(tasks)})")
    rows = train_rows(data_dir, settings.train_rows + settings.train_rows // 4)
    sft_rows, dpo_rows = rows[: settings.train_rows], rows[settings.train_rows :]
    files = {"sft": out / "sft.json", "dpo": out / "dpo.jsonl"}
    atomic_write_text(files["sft"], json.dumps(sft_rows))
    pairs = preference_pairs(dpo_rows, SEED)
    atomic_write_text(files["dpo"], "".join(json.dumps(p) + "\n" for p in pairs))
    common = ["peft=lora", "lora.dropout=0.05", "train.micro_batch_size=8", "log.log_every=10",
              "checkpoint.save_every=50", f"data.max_length={length}",
              f"data.max_prompt_length={length - 32}", f"train.num_threads={settings.threads}"]  # fmt: skip
    sft_config = FinetuneConfig.load(None, [*common, "data.prompt_style=llm-adapters",
                                            "optim.lr=2e-3", "schedule.warmup_steps=20",
                                            f"schedule.max_steps={settings.sft_steps}"])  # fmt: skip
    dpo_config = FinetuneConfig.load(None, [*common, "dpo.loss=sigmoid", "dpo.beta=0.1",
                                            "optim.lr=1e-3", "schedule.warmup_steps=6",
                                            f"schedule.max_steps={settings.dpo_steps}"])  # fmt: skip
    print(f"[demo] SFT with LoRA on {len(sft_rows)} rows -> {out / 'sft'}")
    sft_final = finetune(FinetuneJob("sft", model, str(files["sft"])), sft_config, out / "sft")
    print(f"[demo] DPO with LoRA on pairs from {len(dpo_rows)} other rows -> {out / 'dpo'}")
    dpo_final = finetune(FinetuneJob("dpo", str(sft_final), str(files["dpo"])), dpo_config,
                         out / "dpo")  # fmt: skip
    report = {"model": model, "data": source, "tasks": tasks}
    report.update(measure(out, data_dir, tasks, settings.eval_rows, length,
                          {"base": model, "sft": str(sft_final), "dpo": str(dpo_final)}))  # fmt: skip
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "demo.json", report)
    atomic_write_text(out / "demo.md", summary_markdown(report))
    plot_demo(report, out / "demo.png")
    print(summary_markdown(report))
    print(f"[demo] {out / 'demo.md'}, {out / 'demo.png'}; runs: {out / 'sft'}, {out / 'dpo'}")
    return report


def available_tasks_or_builtin(data_dir: Path) -> list[str]:
    if (data_dir / BUILTIN_TASK / "test.json").is_file():
        return [BUILTIN_TASK]
    return available_tasks(data_dir)


def context_length(model_dir: str) -> int:
    from elmforge.model.integrity import read_config_json
    from elmforge.modeldir.loading import context_length_of

    return context_length_of(read_config_json(model_dir))


def measure(
    out: Path,
    data_dir: Path,
    tasks: list[str],
    eval_rows: int,
    length: int,
    models: dict[str, str],
) -> dict[str, Any]:
    """llm-adapters accuracy of each model and the DPO margin on held-aside test pairs."""
    from elmforge.evaluate.llm_adapters import evaluate_llm_adapters
    from elmforge.finetune.data import PreferenceRow
    from elmforge.finetune.losses import preference_margin
    from elmforge.finetune.tokenize import encode_preferences, pad_id_of
    from elmforge.modeldir.loading import load

    held_rows = [row for task in tasks for row in load_task(data_dir, task, eval_rows)]
    held = [PreferenceRow("held", p["prompt"], p["chosen"], p["rejected"])
            for p in preference_pairs(held_rows, SEED + 1)]  # fmt: skip
    accuracy, margin = {}, {}
    for label, directory in models.items():
        loaded = load(directory, device="cpu", dtype="fp32")
        report = evaluate_llm_adapters(loaded.model, loaded.tokenizer, data_dir, tasks=tasks,
                                       limit=eval_rows, out_dir=out / f"eval-{label}", force=True,
                                       model_name=f"{label}: {directory}", progress=False)  # fmt: skip
        accuracy[label] = {t: r["acc"] for t, r in report["results"].items()}
        pairs, _ = encode_preferences(held, loaded.tokenizer, length, length - 32)
        margin[label] = preference_margin(loaded.model, pairs, pad_id_of(loaded.tokenizer))
        print(f"[demo] {label}: llm-adapters accuracy {accuracy[label]['average']:.3f}, "
              f"preference margin {margin[label]:+.3f} nats on {len(pairs)} held-aside pairs")  # fmt: skip
    return {"eval_rows_per_task": eval_rows, "accuracy": accuracy, "margin_nats": margin}


def summary_markdown(report: dict[str, Any]) -> str:
    labels = list(report["accuracy"])
    tasks = list(report["accuracy"][labels[0]])
    lines = [
        "# Fine-tuning demo",
        "",
        f"Model {report['model']}; data {report['data']}; {report.get('elapsed_s', '?')} s.",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for task in tasks:
        values = " | ".join(f"{100 * report['accuracy'][label][task]:.1f}" for label in labels)
        lines.append(f"| llm-adapters acc, {task} (%) | {values} |")
    margins = " | ".join(f"{report['margin_nats'][label]:+.2f}" for label in labels)
    lines += [f"| preference margin, held-aside pairs (nats) | {margins} |", ""]
    return "\n".join(lines)


def plot_demo(report: dict[str, Any], path: Path) -> None:
    """Accuracy per task of each model, and the held-aside margin, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["accuracy"])
    tasks = list(report["accuracy"][labels[0]])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100,
                                      gridspec_kw={"width_ratios": [4, 1]})  # fmt: skip
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [100 * report["accuracy"][label][t] for t in tasks]
        left.bar([x + i * width for x in range(len(tasks))], values, width, label=label)
    left.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(tasks))], tasks,
                    rotation=30, ha="right")  # fmt: skip
    left.set_ylabel("llm-adapters accuracy (%)")
    left.legend()
    right.bar(labels, [report["margin_nats"][label] for label in labels], color="gray")
    right.set_ylabel("log p(chosen) - log p(rejected), nats")
    right.set_title("held-aside pairs")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
