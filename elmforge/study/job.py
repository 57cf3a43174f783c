"""One run of a study, in its own process: ``python -m elmforge.study.job STUDY_DIR RUN``.

Trains the run of the study's plan (resuming from its newest checkpoint; a finished run is not
trained again), then scores its final model on the held-out documents. Started by
:mod:`elmforge.study.runner`; a failure prints one ``elmforge study: error: ...`` line and exits
with status 2, which the runner reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from elmforge.errors import ElmforgeError


def run_planned(study_dir: Path, name: str, threads: int = 0) -> None:
    from elmforge.study.lws import PLAN_FILE, read_plan, run_finished, score_run
    from elmforge.train.config import RunConfig
    from elmforge.train.loop import pretrain

    plan = read_plan(study_dir / PLAN_FILE)
    if plan is None:
        raise ElmforgeError(f"{study_dir}: no {PLAN_FILE}")
    run = next((r for r in plan["runs"] if r["name"] == name), None)
    if run is None:
        raise ElmforgeError(f"{study_dir / PLAN_FILE}: no run named {name}")
    config = RunConfig.from_dict(run["config"], source=f"{study_dir / PLAN_FILE}: {name}")
    if threads:
        config.train = dataclasses.replace(config.train, num_threads=threads)
    run_dir = study_dir / run["run_dir"]
    if not run_finished(run_dir):
        pretrain(config, run_dir)
    score_run(study_dir, plan, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elmforge.study.job")
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        run_planned(args.study_dir, args.run, args.threads)
    except ElmforgeError as err:
        print(f"elmforge study: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("elmforge study: interrupted", file=sys.stderr)
        return 130
    # CPU time does not depend on how many other processes share the cores, wall time does:
    # together they say how long the run takes on a machine of its own.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.run}: {usage.ru_utime + usage.ru_stime:.0f} CPU seconds in "
        f"{time.monotonic() - started:.0f} s of wall time",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
