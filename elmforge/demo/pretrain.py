"""The demo: the whole lifecycle on the CPU in minutes, on text every Python carries.

:func:`run_demo` trains a BPE tokenizer on the built-in corpus, pretrains a tiny layer-wise-scaled
OpenELM, averages its last checkpoints, reports the validation perplexity of the final and the
averaged model, and samples a continuation from the averaged one. Everything lands in one
directory (``run/`` is an ordinary run directory, ``averaged/`` a model directory,
``demo.json`` the summary); running it again on the same directory resumes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from elmforge.errors import OptionError
from elmforge.progress import Report

DEMO_CONFIG = "tiny-cpu"  # the packaged config (elmforge/configs/tiny-cpu.yaml)
PROMPT = "def read_config(path):\n"
RUN = "run"
AVERAGED = "averaged"
SUMMARY = "demo.json"


def run_demo(
    out: str | os.PathLike,
    *,
    config: str | os.PathLike = DEMO_CONFIG,
    overrides: Sequence[str] = (),
    vocab_size: int = 4096,
    average_last: int = 3,
    eval_documents: int = 200,
    prompt: str = PROMPT,
    report: Report = print,
    on_text: Callable[[str], None] | None = None,
    force_resume: bool = False,
) -> dict[str, Any]:
    """Run the demo into ``out``; return (and write to ``out/demo.json``) its summary.

    ``config`` is a run config YAML (or a packaged config's name) and ``overrides`` dotted ``key=value`` pairs applied after the
    demo's own (its BPE tokenizer of ``vocab_size`` tokens), so the command line wins. ``report``
    receives progress lines and ``on_text`` the sampled text as it streams. ``out`` is new,
    empty or an earlier demo's (anything else in it is refused); ``force_resume`` is
    :func:`~elmforge.train.loop.pretrain`'s.
    """
    from elmforge.data.sources import iter_texts
    from elmforge.evaluate.perplexity import perplexity
    from elmforge.files import atomic_write_json, claim_work_directory
    from elmforge.infer.generate import SamplingOptions, generate_text
    from elmforge.layout import RunDir
    from elmforge.modeldir.loading import load
    from elmforge.train.checkpoint import (
        average_checkpoints,
        latest_checkpoints,
        list_checkpoints,
    )
    from elmforge.train.config import RunConfig
    from elmforge.train.loop import pretrain

    if average_last < 1:
        raise OptionError("average_last", f"{{option}} {average_last}: must be at least 1")
    started = time.perf_counter()
    out = claim_work_directory(out, (RUN, AVERAGED, SUMMARY), "a demo directory")
    own = ["data.tokenizer=bpe", f"data.bpe_vocab_size={vocab_size}"]
    run_config = RunConfig.from_yaml(config, [*own, *overrides])
    # Checked before training: a file source has no validation split of its own.
    validation_sources = run_config.data.sources_for("validation")
    run_dir = out / RUN
    report(f"[demo] pretraining {run_config.model.name} into {run_dir}")
    final_dir = pretrain(run_config, run_dir, force_resume=force_resume)

    # The newest intact checkpoints' model directories (fewer if the run saved fewer).
    checkpoints = latest_checkpoints(run_dir, min(average_last, len(list_checkpoints(run_dir))))
    averaged_dir = out / AVERAGED
    names = ", ".join(c.parent.name for c in checkpoints)
    report(f"[demo] averaging {len(checkpoints)} checkpoints: {names}")
    # The tokenizer comes with the checkpoints; an earlier run's average is the demo's own.
    average_checkpoints(checkpoints, averaged_dir, force=True)

    held_out = itertools.chain.from_iterable(
        iter_texts(source, split="validation") for source in validation_sources
    )
    validation = list(itertools.islice(held_out, eval_documents))
    summary: dict[str, Any] = {}
    for label, directory in (("final", final_dir), ("averaged", averaged_dir)):
        loaded = load(directory, device="cpu")
        scores = perplexity(loaded.model, loaded.tokenizer, validation)
        summary[label] = scores
        report(
            f"[demo] validation perplexity, {label} model: {scores['perplexity']:.2f}"
            f" ({scores['tokens']} tokens, {scores['bits_per_byte']:.3f} bits/byte)"
        )
    options = SamplingOptions(max_new_tokens=48, temperature=0.7, seed=0)
    report("[demo] sampling from the averaged model:")
    if on_text is not None:
        on_text(prompt)
    sample = generate_text(loaded.model, loaded.tokenizer, prompt, options, on_text=on_text).text
    if on_text is not None:
        on_text("\n")
    summary["sample"] = {"prompt": prompt, "continuation": sample}
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / SUMMARY, summary)
    report(f"[demo] done in {summary['elapsed_s']:.0f} s")
    report(f"[demo] run directory: {run_dir}  (metrics.jsonl, TensorBoard events, checkpoints)")
    report(f"[demo] loss curve: {RunDir(run_dir).loss_plot}")
    report(f"[demo] averaged model: {averaged_dir}  summary: {out / SUMMARY}")
    return summary
