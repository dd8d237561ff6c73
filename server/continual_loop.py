"""The server's task loop: rounds per task, evaluation after each task, results and a
checkpoint on disk after every round, so an interrupted run continues where it stopped."""

from __future__ import annotations

import dataclasses
import time
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from multifcl.client_sampling import ClientSampler, never_sampled_classes, sampled_label
from multifcl.client_schedule import ClientSchedule
from multifcl.client_stream_schedule import Stage, StreamSchedule, is_asynchronous
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import Task
from multifcl.data.federation import VALIDATION
from multifcl.evaluation import StageAccuracy, evaluate_seen_tasks
from multifcl.experiment import Experiment, load_experiment
from multifcl.methods import State
from multifcl.metrics import AccuracyHistory, RoundRecord
from multifcl.metrics.client_accuracy import MODELS, ClientStage
from multifcl.results import RunDirectory, default_output_dir, print_summary
from multifcl.results.checkpoints import (
    Checkpoint,
    RngStates,
    save_client_states,
    save_task_state,
)
from multifcl.results.folder_layout import ADAPTERS_FOLDER
from multifcl.results.resume import check_same_clients, open_resumable_run, resume_folder
from multifcl.results.run_directory import new_run_id, saved_run_id
from multifcl.results.run_lock import RunLock
from multifcl.stage_evaluation import evaluate_stage
from server.handshake import Federation, FederationGrid, handshake
from server.progress import RunProgress
from strategies import RoundRunner
from strategies.continual import RoundFailed, RoundPlan
from strategies.evaluation_round import EvaluationRound

NODE_WAIT_SECONDS = 120.0
NODE_SETTLE_SECONDS = 1.0


def run_continual_learning(grid: Grid, config: ExperimentConfig, base_dir: Path) -> dict:
    """Run the whole task stream over the grid's nodes, or continue the run in `resume-from`
    from its last checkpoint; return the final metrics. The run folder is locked against
    any other run until this returns or raises."""
    with _run_lock(config, base_dir) as lock:  # refuses a folder another run is using
        return _run(grid, config, lock.folder, lock.run_id)


def _run(grid: Grid, config: ExperimentConfig, folder: Path, run_id: str | None) -> dict:
    run_dir, experiment, federation, checkpoint = _start_or_resume(grid, config, folder, run_id)
    stream = experiment.data.stream
    tasks = _TaskLoop(grid, config, run_dir, experiment, federation, checkpoint.rounds_logged)
    if config.resume_from is not None:
        log(
            INFO,
            "multifcl: resuming %s from %s; next: %s",
            run_dir.path,
            checkpoint.file_name,
            tasks.next_step(checkpoint),
        )
    log(
        INFO,
        "multifcl: %s on %s, %s, %d clients (of %d partitions) -> %s",
        config.method,
        config.dataset,
        tasks.shape_text(),
        len(federation.partitions),
        federation.num_partitions,
        run_dir.path,
    )
    metrics: dict | None = None
    with tasks.progress.periodic:  # a progress line with an ETA every minute while rounds run
        for step in tasks.steps:  # the tasks, or an asynchronous stream's stages
            if checkpoint.accuracy.tasks_evaluated > step.index:  # before an interruption
                continue
            started = time.perf_counter()
            checkpoint = tasks.train_rounds(checkpoint, step)
            checkpoint, metrics = tasks.evaluate(checkpoint, step, started)
    if metrics is None:  # resumed a run that had already finished
        log(INFO, "multifcl: every task of %s was already done", run_dir.path)
        metrics = {
            **checkpoint.accuracy.metrics(stream.num_tasks),
            **tasks.schedule_record(checkpoint.accuracy),
        }
    for path in experiment.method.export(checkpoint.state, run_dir.path / ADAPTERS_FOLDER):
        log(INFO, "multifcl: adapters exported to %s", path)
    print_summary(metrics, f"{config.method} on {config.dataset}")
    log(INFO, "multifcl: results in %s", run_dir.path)
    return metrics


def uses_stages(config: ExperimentConfig) -> bool:
    """Whether the run goes stage by stage with each client's own task (an asynchronous
    stream, docs/asynchronous.md) rather than task by task."""
    return is_asynchronous(config)


class _TaskLoop:
    """One task (or stage of an asynchronous stream) at a time: its rounds over the
    federation's nodes, then its evaluation, with a checkpoint after every round and after
    the evaluation."""

    def __init__(
        self,
        grid: Grid,
        config: ExperimentConfig,
        run_dir: RunDirectory,
        experiment: Experiment,
        federation: Federation,
        rounds_logged: int,
    ) -> None:
        self.grid = FederationGrid(grid, federation)  # only the nodes that passed the handshake
        self.config, self.run_dir, self.experiment = config, run_dir, experiment
        self.federation = federation
        self.sampler = ClientSampler(
            federation.partitions,
            config.fraction_train,
            config.min_train_clients,
            config.seed,
            experiment.data.schedule,
        )
        self.num_tasks = experiment.data.stream.num_tasks
        self.schedule: StreamSchedule | None = None
        self.steps: list[Task | Stage] = list(experiment.data.stream)
        if uses_stages(config):
            if config.val_fraction > 0:
                raise ConfigError(
                    "run config key 'val-fraction': an asynchronous stream is scored on the "
                    f"test set only; set val-fraction=0, got {config.val_fraction}"
                )
            self.schedule = StreamSchedule.of(config, federation.num_partitions)
            self.steps = self.schedule.stages
        self.step_name = "task" if self.schedule is None else "stage"
        step_rounds = [self._rounds_in(step) for step in self.steps]
        self.round_log = _RoundLog(run_dir, rounds_logged, self.step_name, step_rounds)
        self.progress = RunProgress(step_rounds, self.step_name)
        self.rounds = RoundRunner(
            experiment.method,
            experiment.data.stream,
            round_timeout=config.round_timeout,
            min_fit_fraction=config.min_fit_fraction,
            max_round_retries=config.max_round_retries,
            num_clients=len(federation.partitions),
            on_round=self.round_log.append,
            sampler=self.sampler,
            partitions=federation.partitions,
        )
        self.client_evaluation = None
        if config.eval_local:
            self.client_evaluation = EvaluationRound(
                experiment.data,
                federation.num_partitions,
                config.round_timeout,
                config.rounds_per_task,
            )

    def shape_text(self) -> str:
        """The stream's tasks and rounds in words, for the run's first log line."""
        text = f"{self.num_tasks} tasks x {self.config.rounds_per_task} rounds"
        if self.schedule is None:
            return text
        rounds = sum(self._rounds_in(stage) for stage in self.steps)
        return (
            f"{text}, asynchronous: {rounds} global rounds in {len(self.steps)} stages "
            f"(client-task-order={self.config.client_task_order!r}, "
            f"client-start-delay-rounds={self.config.client_start_delay_rounds})"
        )

    def next_step(self, checkpoint: Checkpoint) -> str:
        """What a run resumed from `checkpoint` does first, in words."""
        name, step = self.step_name, checkpoint.task + 1  # 1-based task or stage
        if checkpoint.task_evaluated:
            if step == len(self.steps):
                return f"nothing, every {name} is done"
            return f"{name} {step + 1} round 1"
        if checkpoint.rounds_done < self._rounds_in(self.steps[checkpoint.task]):
            return f"{name} {step} round {checkpoint.rounds_done + 1}"
        return f"evaluation of {name} {step}"

    def schedule_record(self, accuracy: AccuracyHistory) -> dict:
        """What metrics.json adds for an asynchronous stream: `stream_schedule`, and each
        client's accuracy on its own seen classes after each evaluated stage."""
        if self.schedule is None or not is_asynchronous(self.config):
            return {}
        stream = self.experiment.data.stream
        sizes = [len(stream.test_indices(task)) for task in stream]
        return {
            "num_stages": len(self.steps),
            "stream_schedule": self.schedule.as_record(),
            "client_seen_accuracy": self.schedule.client_accuracy(accuracy.cil, sizes),
        }

    def _rounds_in(self, step: Task | Stage) -> int:
        return step.rounds if isinstance(step, Stage) else self.config.rounds_per_task

    def train_rounds(self, checkpoint: Checkpoint, task: Task | Stage) -> Checkpoint:
        """The task's (stage's) rounds not yet done, each checkpointed; the checkpoint
        after the last."""
        config, run_dir = self.config, self.run_dir
        rounds = self._rounds_in(task)
        first_round = checkpoint.rounds_done + 1 if task.index == checkpoint.task else 1
        if first_round <= rounds and self.schedule is None:
            self._log_joiners(task)
            self._warn_never_sampled(task)
        local_models = dict(checkpoint.local_models) if first_round > 1 else {}
        for server_round in range(first_round, rounds + 1):
            last_round = task.index == len(self.steps) - 1 and server_round == rounds
            snapshots = config.save_task_checkpoints and last_round
            keep_client_states = snapshots or config.eval_local
            self.progress.round_started(task.index + 1, server_round)
            plan = self._plan(task, server_round)
            try:
                result = self.rounds.train_round(
                    self.grid, checkpoint.state, task, server_round, keep_client_states, plan
                )
            except RoundFailed as error:
                raise RoundFailed(
                    f"{error}. The run stopped; its last complete round is checkpointed in "
                    f"{str(run_dir.path)!r}: fix the clients, then continue it with "
                    f"resume-from='{run_dir.path}'"
                ) from None
            if snapshots:
                save_client_states(run_dir.path, result.client_states)
            if config.eval_local:  # each client's model after its last training in the task
                for node, client_state in result.client_states.items():
                    local_models[self.federation.partitions[node]] = client_state
            checkpoint = _advance(
                checkpoint,
                task=task.index,
                rounds_done=server_round,
                state=result.state,
                rounds_logged=self.round_log.rows,
                local_models=local_models,
            )
            checkpoint.save(run_dir.path)
            self.progress.round_finished()
        return checkpoint

    def _plan(self, step: Task | Stage, server_round: int) -> RoundPlan | None:
        """An asynchronous round's plan: each sampled client's own task and round in it,
        drawn among the clients training in this global round; None for a task's round."""
        if self.schedule is None:
            return None
        training = self.schedule.training(step.first_round + server_round - 1)
        held = sorted(p for p in set(self.federation.partitions.values()) if p in training)
        sampled = set(self.sampler.draw(held, step.index, server_round))
        stream = self.experiment.data.stream
        positions = {
            node: (stream.task(training[part][0]), training[part][1])
            for node, part in self.federation.partitions.items()
            if part in sampled
        }
        return RoundPlan(positions, len(positions), sampled_label(sorted(sampled)))

    def _log_joiners(self, task: Task) -> None:
        """With `clients-per-task`: one line saying which clients take part in the task."""
        schedule = self.experiment.data.schedule
        if not schedule.counts:
            return
        active = schedule.active(task.index, self.federation.num_partitions)
        joined = schedule.counts[task.index - 1] if task.index else 0
        log(
            INFO,
            "multifcl: task %d: partition ids 0 to %d take part (clients-per-task=%r)%s",
            task.index + 1,
            active - 1,
            schedule.text,
            f"; {joined} to {active - 1} join now" if active > joined else "",
        )

    def _warn_never_sampled(self, task: Task) -> None:
        """One warning line naming the task's classes whose holders no round samples."""
        if self.sampler.samples_all:
            return
        data, config = self.experiment.data, self.config
        parts = data.client_parts(task, self.federation.num_partitions)
        holdings = {
            p: set(np.unique(data.stream.train_labels[parts[p]]).tolist())
            for p in self.sampler.taking_part(task.index)
        }
        missed = never_sampled_classes(self.sampler, task.index, config.rounds_per_task, holdings)
        if missed:
            log(
                WARNING,
                "multifcl: task %d: no client holding class %s is sampled in any of its %d "
                "rounds (fraction-train=%g, min-train-clients=%d); their rows keep their "
                "earlier values and evaluation still scores them",
                task.index + 1,
                ", ".join(repr(data.stream.class_names[c]) for c in missed),
                config.rounds_per_task,
                config.fraction_train,
                config.min_train_clients,
            )

    def evaluate(
        self, checkpoint: Checkpoint, task: Task | Stage, started: float
    ) -> tuple[Checkpoint, dict]:
        """End the task (or the tasks whose last client finished in the stage), score
        every task seen so far, write metrics.json and checkpoint."""
        method, run_dir = self.experiment.method, self.run_dir
        state = checkpoint.state  # checkpointed below, with the scores
        for ended in self._ended_tasks(task):
            state = method.end_task(state, ended)
        stage = self._score(state, task)
        validation = self._evaluate_validation(state, task)
        clients = self._evaluate_clients(checkpoint, state, task)
        accuracy = checkpoint.accuracy.appended(stage, clients, validation)
        metrics = run_dir.write_metrics(accuracy, self.num_tasks, self.schedule_record(accuracy))
        if self.config.save_task_checkpoints:
            save_task_state(run_dir.path, task.index, state)
        checkpoint = _advance(
            checkpoint,
            task=task.index,
            rounds_done=self._rounds_in(task),
            state=state,
            accuracy=accuracy,
            rounds_logged=self.round_log.rows,
            local_models={},
        )
        checkpoint.save(run_dir.path)
        log(
            INFO,
            "%s %d/%d done in %.1f s: CIL accuracy per task %s, A_t %.2f",
            self.step_name,
            task.index + 1,
            len(self.steps),
            time.perf_counter() - started,
            [None if a is None else round(a, 1) for a in stage.cil],
            metrics["stage_accuracy"][-1],
        )
        if clients is not None:
            log(INFO, "task %d/%d: %s", task.index + 1, self.num_tasks, _spread_line(metrics))
        return checkpoint, metrics

    def _evaluate_validation(self, state: State, task: Task) -> StageAccuracy | None:
        """val-fraction > 0: the held-out training samples of every seen task, scored as the
        test sets are (A_t logged); None otherwise."""
        if self.config.val_fraction == 0:
            return None
        method, data = self.experiment.method, self.experiment.data
        validation = evaluate_seen_tasks(method, state, data, task, subset=VALIDATION)
        stage_accuracy = sum(validation.cil) / len(validation.cil)  # A_t, as metrics.json's
        log(INFO, "task %d/%d: validation A_t %.2f", task.index + 1, self.num_tasks, stage_accuracy)
        return validation

    def _ended_tasks(self, step: Task | Stage) -> list[Task]:
        """The tasks that end with this step: the task itself, or in a stage the tasks
        whose last client finishes them in it."""
        if self.schedule is None:
            return [step]
        stream = self.experiment.data.stream
        return [stream.task(index) for index in self.schedule.ended_tasks(step)]

    def _score(self, state: State, step: Task | Stage) -> StageAccuracy:
        """The global state's row of each accuracy matrix after the task or stage."""
        data = self.experiment.data
        if self.schedule is None:
            return evaluate_seen_tasks(self.experiment.method, state, data, step)
        seen = self.schedule.seen_tasks(step)
        return evaluate_stage(self.experiment.method, state, data, seen)

    def _evaluate_clients(
        self, checkpoint: Checkpoint, state: State, task: Task
    ) -> ClientStage | None:
        """eval-local: every client's scores of its own test slice under the global model
        and its own model (its rounds.csv row appended); None when eval-local is off."""
        if self.client_evaluation is None:
            return None
        stage, record = self.client_evaluation.run(
            self.grid, self.federation.partitions, state, checkpoint.local_models, task
        )
        self.round_log.append(record)
        return stage


def _run_lock(config: ExperimentConfig, base_dir: Path) -> RunLock:
    """The lock on the run's folder: `resume-from` and its run's id, or a new run's."""
    if config.resume_from is not None:
        folder = resume_folder(config)
        return RunLock(folder, saved_run_id(folder), "run config key 'resume-from'")
    return RunLock(config.output_dir or default_output_dir(config, base_dir), new_run_id())


def _start_or_resume(
    grid: Grid, config: ExperimentConfig, folder: Path, run_id: str | None
) -> tuple[RunDirectory, Experiment, Federation, Checkpoint]:
    """The run folder, the experiment, the federation (after the handshake, which every
    start and resume does) and the checkpoint to go on from: a new run's initial state, or
    the last checkpoint of the run in `resume-from` (whose folder, config and checkpoint are
    checked before the backbone and data load)."""
    saved_config, checkpoint = None, None
    if config.resume_from is not None:
        folder, saved_config, checkpoint = open_resumable_run(config, _warn)
        run_dir = RunDirectory(folder, config.logger, resume=True)
    else:
        run_dir = RunDirectory(folder, config.logger, run_id=run_id)  # refuses another run's
    _check_federation_size(config, _wait_for_nodes(grid))
    experiment = load_experiment(config)
    federation = handshake(
        grid, experiment.data.fingerprint, config.round_timeout, config.allow_missing_partitions
    )
    num_clients = federation.num_partitions  # the data is split this many ways
    stream = experiment.data.stream
    experiment.data.check_clients(num_clients)
    experiment.data.check_readable()
    if checkpoint is not None:
        check_same_clients(saved_config, num_clients)
        run_dir.reopen(config, checkpoint.rounds_logged)
        checkpoint.rng.restore()
        return run_dir, experiment, federation, checkpoint
    run_dir.start(
        config,
        {
            "num-clients": num_clients,
            "num-classes": stream.num_classes,
            "class-order": stream.class_order.tolist(),
            "class-names": stream.class_names,
        },
    )
    run_dir.write_partition(experiment.data, num_clients, federation.held)
    checkpoint = Checkpoint(
        step=0,
        task=0,
        rounds_done=0,
        state=experiment.method.initial_state(),
        accuracy=AccuracyHistory(),
        rounds_logged=0,
        rng=RngStates.capture(),
        run_id=run_dir.run_id,
    )
    checkpoint.save(run_dir.path)
    return run_dir, experiment, federation, checkpoint


class _RoundLog:
    """Appends each round's record to rounds.csv and the log, counting the rows."""

    def __init__(
        self, run_dir: RunDirectory, rows: int, step_name: str, step_rounds: list[int]
    ) -> None:
        self.run_dir = run_dir
        self.rows = rows
        self.step_name = step_name  # "task", or "stage" in an asynchronous stream
        self.step_rounds = step_rounds  # rounds of each task or stage

    def append(self, record: RoundRecord) -> None:
        self.run_dir.append_round(record)
        self.rows += 1
        if record.phase == "evaluate":
            log(
                INFO,
                "%s %d/%d clients' evaluation: %d clients, %.1f s, up %d B, down %d B",
                self.step_name,
                record.task,
                len(self.step_rounds),
                record.clients,
                record.seconds,
                record.bytes_up,
                record.bytes_down,
            )
            return
        loss = "" if record.train_loss is None else f", train loss {record.train_loss:.4f}"
        retry = "" if record.attempt == 1 else f" (attempt {record.attempt})"
        log(
            INFO if record.merged else WARNING,
            "%s %d/%d round %d/%d%s: %d clients%s, %.1f s, up %d B, down %d B%s",
            self.step_name,
            record.task,
            len(self.step_rounds),
            record.round,
            self.step_rounds[record.task - 1],
            retry,
            record.clients,
            "" if record.merged else " (too few, not merged)",
            record.seconds,
            record.bytes_up,
            record.bytes_down,
            loss,
        )


def _spread_line(metrics: dict) -> str:
    """The clients' accuracy on their own test slices after the last task, in words."""
    clients = metrics["client_accuracy"]
    parts = []
    for model in MODELS:
        summary = clients[model]
        if summary["mean"][-1] is None:
            parts.append(f"{model} model: no client scored")
            continue
        parts.append(
            f"{model} model: mean {summary['mean'][-1]:.2f}, std {summary['std'][-1]:.2f}, "
            f"worst {summary['worst'][-1]:.2f} (client {summary['worst_client'][-1]}) over "
            f"{summary['clients_scored'][-1]} clients"
        )
    return "per-client accuracy on their own test slices, " + "; ".join(parts)


def _advance(checkpoint: Checkpoint, **changes) -> Checkpoint:
    """The next checkpoint: `changes` applied, the step counted on, the RNG states of now."""
    return dataclasses.replace(
        checkpoint, step=checkpoint.step + 1, rng=RngStates.capture(), **changes
    )


def _warn(line: str) -> None:
    log(WARNING, "%s", line)


def _check_federation_size(config: ExperimentConfig, num_clients: int) -> None:
    """A one-line ConfigError when the federation is not the size the config asks for, or
    smaller than a round's `min-train-clients` or a task's `clients-per-task` (checked
    against the partitions after the handshake where `allow-missing-partitions`)."""
    if config.min_train_clients > num_clients:
        raise ConfigError(
            f"run config key 'min-train-clients': {config.min_train_clients} is more than "
            f"the federation's {num_clients} clients"
        )
    if config.expected_clients and num_clients != config.expected_clients:
        raise ConfigError(
            f"run config key 'expected-clients': this config expects {config.expected_clients} "
            f"clients, the federation has {num_clients} (in simulation: --federation-config "
            f'"num-supernodes={config.expected_clients}")'
        )
    if is_asynchronous(config):  # a delay needs two clients
        StreamSchedule.of(config, num_clients)
    if not config.allow_missing_partitions:  # then every partition has its node
        ClientSchedule.parse(config.clients_per_task, config.num_tasks).check_federation(
            num_clients
        )


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
