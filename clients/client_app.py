"""The ClientApp: trains the method on this node's slice of the current task."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from multifcl.config import ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.seeding import derive_seed
from strategies.records import ARRAYS, CONFIG, record_to_state, update_to_content

app = ClientApp()


@lru_cache(maxsize=4)
def _parse_config(run_config: tuple) -> ExperimentConfig:
    """The run config is parsed once per process, not once per message."""
    return ExperimentConfig.from_run_config(dict(run_config))


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = _parse_config(tuple(sorted(context.run_config.items())))
    experiment = load_experiment(config)
    client = int(context.node_config["partition-id"])
    num_clients = int(context.node_config["num-partitions"])
    round_config = msg.content[CONFIG]
    task = experiment.data.stream.task(int(round_config["task"]))
    data = experiment.data.client_train_set(task, client, num_clients)
    seed = derive_seed(config.seed, task.index, int(round_config["round"]), client)
    state = record_to_state(msg.content[ARRAYS])
    update = experiment.method.train_client(state, data, task, seed)
    return Message(update_to_content(update), reply_to=msg)
