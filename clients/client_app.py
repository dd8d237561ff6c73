"""The ClientApp: trains the method on this node's slice of the current task, and (eval-local)
scores models on this node's test slice."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import multifcl.app_imports  # noqa: F401  the library in one import (see its docstring)
from multifcl.client_evaluation import score_own_slice
from multifcl.config import ExperimentConfig
from multifcl.data import Task
from multifcl.experiment import Experiment, load_experiment
from multifcl.features import counting_lookups
from multifcl.features.shared_store import share_features_on_this_machine
from multifcl.metrics.resources import (
    CLIENT_SECONDS,
    PEAK_RSS_MB,
    peak_rss_mb,
    release_cached_gpu_memory,
)
from multifcl.seeding import derive_seed
from protocol.broadcast import assemble_state, missing_content
from protocol.messages import (
    ARRAYS,
    CLAIM,
    CONFIG,
    LOCAL_ARRAYS,
    METRICS,
    NUM_PARTITIONS,
    PARTITION_ID,
    REPORT,
    TRAINED,
    record_to_state,
    state_to_record,
    trained_record,
    update_to_content,
)

app = ClientApp()
PER_MACHINE_KEYS = ("data-root", "split-file")  # paths that may differ from machine to machine


@lru_cache(maxsize=4)
def _parse_config(run_config: tuple) -> ExperimentConfig:
    """The run config is parsed once per process, not once per message."""
    return ExperimentConfig.from_run_config(dict(run_config))


def _this_machines_run_config(context: Context) -> tuple:
    """The run config, with `data-root` and `split-file` from this SuperNode's `--node-config`
    where it sets them, so that every client machine reads its own copy of the data set (the
    handshake checks that the copies agree)."""
    run_config = dict(context.run_config)
    for key in PER_MACHINE_KEYS:
        if key in context.node_config:
            run_config[key] = context.node_config[key]
    return tuple(sorted(run_config.items()))


def _partition(context: Context) -> tuple[int, int]:
    """This node's (partition-id, num-partitions) from its node config, or one clear line."""
    try:
        return int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    except (KeyError, TypeError, ValueError):
        given = {key: context.node_config.get(key) for key in (PARTITION_ID, NUM_PARTITIONS)}
        raise ValueError(
            f"this SuperNode needs integer {PARTITION_ID} and {NUM_PARTITIONS} in its "
            f"--node-config, got {given}"
        ) from None


@app.query("handshake")
def handshake(msg: Message, context: Context) -> Message:
    """Before the first round: this node's partition and the fingerprint of its data."""
    client, num_clients = _partition(context)
    experiment = load_experiment(_parse_config(_this_machines_run_config(context)))
    claim = {
        PARTITION_ID: client,
        NUM_PARTITIONS: num_clients,
        **experiment.data.fingerprint.as_record(),
    }
    return Message(RecordDict({CLAIM: ConfigRecord(claim)}), reply_to=msg)


def _proved_partition(msg: Message, context: Context) -> tuple[int, int]:
    """This node's (partition-id, num-partitions), the same it proved at the handshake."""
    client, num_clients = _partition(context)
    proved = msg.content[CONFIG].get(PARTITION_ID, client)
    if proved != client:
        raise ValueError(
            f"this SuperNode holds {PARTITION_ID}={client} now but proved {proved} at the "
            "handshake: its node config changed during the run (resume the run instead)"
        )
    return client, num_clients


def _task(experiment: Experiment, msg: Message) -> Task:
    """The message's task of the stream, or one clear line."""
    index, stream = msg.content[CONFIG]["task"], experiment.data.stream
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < stream.num_tasks:
        raise ValueError(f"the message's task {index!r} is not one of the {stream.num_tasks} tasks")
    return stream.task(index)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = _parse_config(_this_machines_run_config(context))
    client, num_clients = _proved_partition(msg, context)
    round_config = msg.content[CONFIG]
    state = assemble_state(msg.content, context.state)  # the chunks sent and those held
    if state is None:  # a chunk neither sent nor held (intact): the server resends it whole
        return Message(missing_content(), reply_to=msg)
    experiment = load_experiment(config)
    task = _task(experiment, msg)
    data = experiment.data.client_train_set(task, client, num_clients)
    seed = derive_seed(config.seed, task.index, int(round_config["round"]), client)
    share_features_on_this_machine(experiment.method, context.run_id)  # one cache per machine
    started = time.perf_counter()
    with counting_lookups(experiment.method.feature_cache) as lookups:
        update = experiment.method.train_client(state, data, task, seed)
    update.metrics.update(lookups)
    update.metrics[CLIENT_SECONDS] = time.perf_counter() - started
    update.metrics[PEAK_RSS_MB] = peak_rss_mb()
    release_cached_gpu_memory(experiment.backbone.device)
    content = update_to_content(update, config.transmit_dtype)
    content[TRAINED] = trained_record(task.index, np.unique(data.labels).tolist())
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """eval-local: score the global model and, when sent, this client's own model on this
    client's test slice of every task seen so far (`multifcl.client_evaluation`)."""
    config = _parse_config(_this_machines_run_config(context))
    client, num_clients = _proved_partition(msg, context)
    experiment = load_experiment(config)
    task = _task(experiment, msg)
    global_state = record_to_state(msg.content[ARRAYS])
    local_state = None
    if LOCAL_ARRAYS in msg.content.array_records:
        local_state = record_to_state(msg.content[LOCAL_ARRAYS])
        if sorted(local_state) != sorted(global_state):
            raise ValueError("the local model's arrays are not those of the global model")
    started = time.perf_counter()
    report = score_own_slice(
        experiment.method, experiment.data, task, client, num_clients, global_state, local_state
    )
    seconds = time.perf_counter() - started
    release_cached_gpu_memory(experiment.backbone.device)
    content = RecordDict(
        {REPORT: state_to_record(report), METRICS: MetricRecord({CLIENT_SECONDS: seconds})}
    )
    return Message(content, reply_to=msg)
