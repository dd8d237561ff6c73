"""The server's task loop: rounds per task, evaluation after each task, results on disk."""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from multifcl.config import ExperimentConfig
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.experiment import load_experiment
from multifcl.results import RunDirectory, default_output_dir, print_summary
from strategies import ContinualStrategy
from strategies.records import record_to_state, state_to_record

NODE_WAIT_SECONDS = 120.0
NODE_SETTLE_SECONDS = 1.0
ROUND_TIMEOUT_SECONDS = 24 * 3600.0


def run_continual_learning(grid: Grid, config: ExperimentConfig, base_dir: Path) -> dict:
    """Run the whole task stream over the grid's nodes; return the final metrics."""
    output_dir = config.output_dir or default_output_dir(config, base_dir)
    run_dir = RunDirectory(output_dir)  # refuses a folder that already holds a run
    experiment = load_experiment(config)
    stream = experiment.data.stream
    num_clients = _wait_for_nodes(grid)
    experiment.data.check_clients(num_clients)
    experiment.data.check_readable()
    run_dir.start(
        config,
        {
            "num-clients": num_clients,
            "num-classes": stream.num_classes,
            "class-order": stream.class_order.tolist(),
            "class-names": stream.class_names,
        },
    )
    log(
        INFO,
        "multifcl: %s on %s, %d tasks x %d rounds, %d clients -> %s",
        config.method,
        config.dataset,
        stream.num_tasks,
        config.rounds_per_task,
        num_clients,
        run_dir.path,
    )

    def on_round(record) -> None:
        run_dir.append_round(record)
        loss = "" if record.train_loss is None else f", train loss {record.train_loss:.4f}"
        log(
            INFO,
            "task %d/%d round %d/%d: %d clients, %.1f s, up %d B, down %d B%s",
            record.task,
            stream.num_tasks,
            record.round,
            config.rounds_per_task,
            record.clients,
            record.seconds,
            record.bytes_up,
            record.bytes_down,
            loss,
        )

    strategy = ContinualStrategy(experiment.method, on_round=on_round)
    state = experiment.method.initial_state()
    cil, til, all_seen = [], [], []
    metrics: dict = {}
    for task in stream:
        started = time.perf_counter()
        result = strategy.start(
            grid,
            state_to_record(state),
            num_rounds=config.rounds_per_task,
            timeout=ROUND_TIMEOUT_SECONDS,
            train_config=ConfigRecord({"task": task.index}),
        )
        state = record_to_state(result.arrays)
        stage = evaluate_seen_tasks(experiment.method, state, experiment.data, task)
        cil.append(stage.cil)
        til.append(stage.til)
        all_seen.append(stage.cil_all_seen)
        metrics = run_dir.write_metrics(cil, til, all_seen, stream.num_tasks)
        log(
            INFO,
            "task %d/%d done in %.1f s: CIL accuracy per task %s, A_t %.2f",
            task.index + 1,
            stream.num_tasks,
            time.perf_counter() - started,
            [round(a, 1) for a in stage.cil],
            metrics["stage_accuracy"][-1],
        )
    for path in experiment.method.export(state, run_dir.path / "adapters"):
        log(INFO, "multifcl: adapters exported to %s", path)
    print_summary(metrics, f"{config.method} on {config.dataset}")
    log(INFO, "multifcl: results in %s", run_dir.path)
    return metrics


def _wait_for_nodes(grid: Grid) -> int:
    """The number of connected nodes, once at least one is there and the count holds steady.

    In simulation the ServerApp can start before the SuperNodes have registered.
    """
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    previous = -1
    while time.monotonic() < deadline:
        count = len(list(grid.get_node_ids()))
        if count and count == previous:
            return count
        previous = count
        time.sleep(NODE_SETTLE_SECONDS)
    raise RuntimeError(f"no client node connected within {NODE_WAIT_SECONDS:.0f} s")
