"""The handshake before the first round: each node's partition id, number of partitions and
data fingerprint are checked, and a federation that does not add up is refused in one line
naming the node (in-process grid; tests/test_deployment.py does it on loopback)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from clients.client_app import train
from multifcl.config import ExperimentConfig
from multifcl.data.fingerprint import split_fingerprint
from multifcl.data.sources import load_splits
from multifcl.errors import FederationRefused
from multifcl.experiment import load_experiment
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from tests.conftest import in_process_grid, run_in_process
from tests.test_data_sources import make_image_folder


def grid_with(config: ExperimentConfig, node_configs: list[dict]) -> InProcessGrid:
    """An in-process grid of len(node_configs) nodes, each with the given node config."""
    grid = in_process_grid(config, num_nodes=len(node_configs))
    for context, node_config in zip(grid.contexts.values(), node_configs):
        context.node_config.clear()
        context.node_config.update(node_config)
    return grid


def refusal(grid: InProcessGrid, config: ExperimentConfig, tmp_path) -> str:
    """The one line the run is refused with; nothing was trained or written."""
    with pytest.raises(FederationRefused) as refused:
        run_continual_learning(grid, config, tmp_path)
    line = str(refused.value)
    assert "\n" not in line and not grid.sent and not config.output_dir.exists()
    return line


def nodes(*partitions: int, num_partitions: int = 2) -> list[dict]:
    return [{"partition-id": p, "num-partitions": num_partitions} for p in partitions]


def test_a_duplicate_partition_id_is_refused_naming_the_node(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    line = refusal(grid_with(config, nodes(0, 1, 0)), config, tmp_path)
    assert line.startswith("node 1002: partition-id=0 is already held by node 1000")


def test_a_partition_id_out_of_range_is_refused_naming_the_node(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    line = refusal(grid_with(config, nodes(0, 5)), config, tmp_path)
    assert line == ("node 1001: partition-id=5 is out of range for num-partitions=2 (0 to 1)")


def test_nodes_that_disagree_on_num_partitions_are_refused(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    grid = grid_with(config, nodes(0) + nodes(1, num_partitions=3))
    line = refusal(grid, config, tmp_path)
    assert line.startswith("node 1001 says num-partitions=3, node 1000 says 2")


def test_a_node_without_a_partition_in_its_node_config_is_named(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    line = refusal(grid_with(config, [*nodes(0), {"num-partitions": 2}]), config, tmp_path)
    assert line.startswith("node 1001: the handshake failed: error: ")
    assert "needs integer partition-id and num-partitions in its --node-config" in line


def test_a_missing_partition_is_refused_at_start(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    line = refusal(grid_with(config, nodes(0)), config, tmp_path)
    assert line.startswith(
        "partition-id 1 of num-partitions=2 held by no node (1 connected: node 1000 holds 0)"
    )
    assert "allow-missing-partitions=true" in line


def test_allowed_missing_partitions_are_left_out_of_partition_json(tiny_config, tmp_path):
    """The connected client trains half the data, and partition.json says so."""
    config = tiny_config(rounds_per_task=1, allow_missing_partitions=True)
    run_continual_learning(grid_with(config, nodes(1)), config, tmp_path)
    saved = json.loads((config.output_dir / "partition.json").read_text())
    assert (saved["num_clients"], saved["partition_ids"]) == (2, [1])
    data = load_experiment(config).data
    for task, entry in zip(data.stream, saved["tasks"]):
        assert [sum(row) for row in entry["counts"]] == [len(data.client_parts(task, 2)[1])]
        assert sum(entry["counts"][0]) < len(data.stream.train_indices(task))
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("1", "0"), ("1", "0")]


def test_a_data_copy_with_a_renamed_class_folder_is_refused(tiny_config, tmp_path):
    server_copy = make_image_folder(tmp_path / "server-copy")
    config = tiny_config(dataset="imagefolder", data_root=server_copy, rounds_per_task=1)
    renamed = make_image_folder(tmp_path / "node-1")
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "yak")
    node_configs = nodes(0, 1)
    node_configs[0]["data-root"] = str(make_image_folder(tmp_path / "node-0"))
    node_configs[1]["data-root"] = str(renamed)
    line = refusal(grid_with(config, node_configs), config, tmp_path)
    assert line.startswith(
        "node 1001 (partition-id=1): its data differs from the server's: class folders "
        "differ from position 0: ['dog', 'emu', 'fox', 'yak'] where the server has "
        "['cat', 'dog', 'emu', 'fox']"
    )


def test_a_node_with_another_split_file_is_refused(tiny_config, tmp_path):
    data = make_image_folder(tmp_path / "data") / "train"
    split_files = []
    for index, test_file in enumerate(("004.png", "005.png")):
        lines = [
            f"{name}/{k:03d}.png train" for name in ("cat", "dog", "emu", "fox") for k in range(4)
        ]
        lines += [f"{name}/{test_file} test" for name in ("cat", "dog", "emu", "fox")]
        split_files.append(tmp_path / f"split-{index}.txt")
        split_files[-1].write_text("\n".join(lines))
    config = tiny_config(
        dataset="imagefolder", data_root=data, split_file=split_files[0], rounds_per_task=1
    )
    node_configs = nodes(0, 1)
    node_configs[1]["split-file"] = str(split_files[1])  # this machine's own split file
    line = refusal(grid_with(config, node_configs), config, tmp_path)
    assert line.startswith(
        "node 1001 (partition-id=1): its data differs from the server's: another split-file "
        "split (digest "
    )


def test_fingerprints_match_equal_copies_and_tell_what_differs(tmp_path):
    copies = [make_image_folder(tmp_path / name) for name in ("a", "b", "c", "d")]
    with open(copies[2] / "train" / "dog" / "000.png", "ab") as grown:
        grown.write(b"\0")  # one byte more: another file, though it decodes the same
    (copies[3] / "train" / "emu" / "005.png").unlink()

    def fingerprint(root):
        config = ExperimentConfig(dataset="imagefolder", data_root=root)
        splits = load_splits(config, image_size=32)
        return split_fingerprint(splits.train, splits.class_names)

    reference = fingerprint(copies[0])
    assert fingerprint(copies[1]) == reference  # the same files in another folder
    assert (
        fingerprint(copies[2])
        .difference(reference)
        .startswith("same class folders and sample count, but other files or sizes")
    )
    assert fingerprint(copies[3]).difference(reference) == (
        "23 training samples where the server has 24"
    )
    synthetic = load_experiment(ExperimentConfig(dataset="synthetic")).data
    assert synthetic.fingerprint is synthetic.fingerprint  # computed once per process


class LateJoinerGrid(InProcessGrid):
    """Node 1002 connects only after the handshake, claiming partition 0 again."""

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n != 1002 or self.queried]


def test_a_node_that_joins_after_the_handshake_is_left_out(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    grid = LateJoinerGrid(train, config.to_run_config(), num_nodes=3)
    for context, node_config in zip(grid.contexts.values(), nodes(0, 1, 0)):
        context.node_config.update(node_config)
    run_continual_learning(grid, config, tmp_path)
    assert {m.metadata.dst_node_id for m in grid.sent} == {1000, 1001}
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("2", "0"), ("2", "0")]


class ReconfiguredGrid(InProcessGrid):
    """After the handshake, node 1002 comes back holding partition 0 (same node id)."""

    def send_and_receive(self, messages, *, timeout=None):
        if self.queried:
            self.contexts[1002].node_config["partition-id"] = 0
        return super().send_and_receive(messages, timeout=timeout)


def test_a_node_whose_partition_changed_after_the_handshake_fails_its_rounds(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    run_continual_learning(ReconfiguredGrid(train, config.to_run_config(), 3), config, tmp_path)
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("2", "1"), ("2", "1")]
    assert all(r["failed_clients"].startswith("1002: error: ") for r in rows)
    assert "holds partition-id=0 now but proved 2 at the handshake" in rows[0]["failed_clients"]


def test_a_resumed_run_does_the_handshake_again(tiny_config, tmp_path):
    config = tiny_config(rounds_per_task=1)
    run_in_process(config, base_dir=tmp_path)
    resumed = ExperimentConfig(**{**vars(config), "resume_from": config.output_dir})
    grid = grid_with(resumed, nodes(0, 0))
    with pytest.raises(FederationRefused, match=re.escape("node 1001: partition-id=0 is already")):
        run_continual_learning(grid, resumed, tmp_path)
    assert not grid.sent and len(grid.queried) == 2
