"""Run-config checks before Flower sees them: the nearest key for a misspelling, seeds that
name their key, and `multifcl check-config` / `multifcl run` refusing in one line."""

from __future__ import annotations

import pytest

from multifcl.cli import main
from multifcl.config import ConfigError, ExperimentConfig


def test_a_misspelled_key_is_named_with_the_nearest_known_key():
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig.from_run_config({"num-task": 3})
    assert str(caught.value) == (
        "run config key 'num-task': unknown key (did you mean 'num-tasks'?)"
    )
    with pytest.raises(ConfigError, match=r"unknown key$"):
        ExperimentConfig.from_run_config({"colour": "blue"})


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ({"seed": -1}, "run config key 'seed': must be in [0, 2**32), got -1"),
        (
            {"class-order-seed": 2**33},
            f"run config key 'class-order-seed': must be in [0, 2**32), got {2**33}",
        ),
    ],
)
def test_seeds_out_of_range_name_their_key(pairs, message):
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig.from_run_config(pairs)
    assert str(caught.value) == message


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_commands_refuse_a_bad_config_in_one_line_before_anything_starts(command, capsys):
    assert main([command, "-c", "num-task=3"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"multifcl {command}: run config key 'num-task': unknown key (did you mean 'num-tasks'?)\n"
    )


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("method='lfw'", "run config key 'method': unknown method 'lfw'"),
        ("dataset='cifar10'", "run config key 'dataset': unknown dataset 'cifar10'"),
        ("eval-group='rot45'", "run config key 'eval-group': unknown group 'rot45'"),
    ],
)
def test_commands_refuse_an_unknown_name_in_one_line(command, pair, message, capsys):
    assert main([command, "-c", pair]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"multifcl {command}: {message} (choose from ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_commands_refuse_a_task_count_that_cannot_split_the_classes(command, capsys):
    assert main([command, "-c", "dataset='cifar100' num-tasks=7"]) == 2
    assert capsys.readouterr().err == (
        f"multifcl {command}: run config key 'num-tasks': 7 does not divide the 100 classes "
        "of dataset 'cifar100'\n"
    )


def test_check_config_reads_preset_files_and_pairs_in_order(tmp_path, capsys):
    preset = tmp_path / "preset.toml"
    preset.write_text("method = 'finetune'\nnum-tasks = 3\n")
    assert main(["check-config", "-c", str(preset), "-c", "num-tasks=2"]) == 0
    assert capsys.readouterr().out == "ok: finetune on digits with vit-tiny, 2 tasks x 2 rounds\n"
    assert main(["check-config", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml' cannot be read" in capsys.readouterr().err


def test_the_server_app_refuses_an_unknown_name_before_its_task_loop():
    from types import SimpleNamespace

    from server.server_app import main as server_main

    context = SimpleNamespace(run_config={"method": "lfw"})
    with pytest.raises(ConfigError, match="^run config key 'method': unknown method 'lfw'"):
        server_main(None, context)  # the grid is never touched
