"""Look inside a finished run: CKA drift per block on a fixed probe set, diffused redundancy
of the final feature and neural-collapse measures, for every task checkpoint (the run needs
`save-task-checkpoints = true`). Writes RUN_DIR/analysis.md with figures and CSVs under
RUN_DIR/analysis/. With --robustness, the final model is also evaluated on rotated and
flipped test sets, plain and with equizero canonicalization.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multifcl.analysis.analysis_report import AnalysisReport, write_report
from multifcl.analysis.checkpoint_analysis import (
    DEFAULT_SAMPLES_PER_TASK,
    analyze_checkpoints,
    evaluation_subsets,
)
from multifcl.analysis.finished_run import AnalysisError, FinishedRun, load_state
from multifcl.analysis.robustness import robustness_table
from multifcl.equizero import TRANSFORM_GROUPS, group_transforms

SUMMARY = "CKA drift, diffused redundancy, neural collapse and equizero robustness of a run"
DEFAULT_DRAWS = 5
EXAMPLES = (
    "multifcl run -c \"save-task-checkpoints=true output-dir='/abs/runs/kept'\"",
    "multifcl analyze /abs/runs/kept",
    "multifcl analyze /abs/runs/kept --robustness --group flip-rot90",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run's folder")
    parser.add_argument(
        "--probe-size",
        type=int,
        default=None,
        help="test samples per task; task 1's are the probe set (default: all of a task's, "
        f"at most {DEFAULT_SAMPLES_PER_TASK}; a larger size than task 1 holds is an error)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=DEFAULT_DRAWS,
        help="random dimension subsets per fraction (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sample and subset seed")
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also evaluate the final model on rotated/flipped test sets, with equizero",
    )
    parser.add_argument(
        "--group",
        default=None,
        help=f"equizero group for --robustness: {', '.join(TRANSFORM_GROUPS)} "
        "(default: the run's eval-group)",
    )


def run(args: argparse.Namespace) -> int:
    from multifcl.cli import CommandError

    try:
        path = analyze_run(
            args.run_dir, args.probe_size, args.draws, args.seed, args.robustness, args.group
        )
    except AnalysisError as error:
        raise CommandError(str(error)) from None
    print(f"analysis written to {path}")
    return 0


def analyze_run(
    run_dir: Path,
    probe_size: int | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    robustness: bool = False,
    group: str | None = None,
) -> Path:
    """Analyse the run in `run_dir` and write its report; return the path of analysis.md."""
    from multifcl.experiment import load_experiment  # heavy: after the cheap checks

    if probe_size is not None and probe_size < 2:
        raise AnalysisError(f"--probe-size: CKA needs at least 2 samples, got {probe_size}")
    if draws < 1:
        raise AnalysisError(f"--draws: must be >= 1, got {draws}")
    if group is not None:
        try:
            group_transforms(group, "--group")
        except ValueError as error:
            raise AnalysisError(str(error)) from None
    finished = FinishedRun.open(run_dir)
    group = group or finished.config.eval_group
    experiment = load_experiment(finished.config)
    found = analyze_checkpoints(finished, experiment, probe_size, draws, seed)
    report = AnalysisReport(finished, found, draws, seed)
    if robustness:
        method = experiment.method
        final = load_state(
            finished.task_checkpoints[-1], method.initial_state(), method.growing_state_keys
        )
        test_sets = evaluation_subsets(experiment, probe_size, seed)[: finished.num_tasks]
        seen = experiment.data.stream.task(finished.num_tasks - 1).seen_classes.stop
        report.robustness = robustness_table(method, final, test_sets, seen, group)
        report.robustness_group = group
    return write_report(report)
