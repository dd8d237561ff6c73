"""The run config: defaults, conversion from Flower's flat values, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.config_names import check_names
from multifcl.data.sources import data_source
from multifcl.equizero import group_transforms
from multifcl.methods import method_class


def one_line_error(error_type, build):
    with pytest.raises(error_type) as caught:
        build()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_offline_quickstart():
    config = ExperimentConfig()
    assert (config.dataset, config.backbone, config.num_tasks) == ("digits", "vit-tiny", 5)
    assert config.class_order_seed == 1993
    assert config.max_train_per_class is None


def test_from_run_config_converts_flat_values(tmp_path):
    config = ExperimentConfig.from_run_config(
        {
            "method": "finetune",
            "num-tasks": 2,
            "lr": 1,  # an int where a float is expected is fine
            "max-train-per-class": 0,
            "data-root": str(tmp_path),
            "output-dir": "",
        }
    )
    assert config.method == "finetune" and config.num_tasks == 2
    assert isinstance(config.lr, float)
    assert config.max_train_per_class is None
    assert config.data_root == tmp_path.resolve() and config.output_dir is None


def test_round_trip_through_run_config(tmp_path):
    config = ExperimentConfig(method="finetune", max_train_per_class=5, output_dir=tmp_path)
    assert ExperimentConfig.from_run_config(config.to_run_config()) == config


def test_a_negative_cap_is_refused_not_read_as_no_cap():
    """Issue 18.6: max-train-per-class=-5 used to mean "all"; 0 is the one way to say it."""
    message = one_line_error(
        ConfigError, lambda: ExperimentConfig.from_run_config({"max-train-per-class": -5})
    )
    assert message == "run config key 'max-train-per-class': must be >= 0 (0 = no cap), got -5"
    assert ExperimentConfig.from_run_config({"max-train-per-class": 3}).max_train_per_class == 3


def test_pyproject_defaults_parse():
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    defaults = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert ExperimentConfig.from_run_config(defaults) == ExperimentConfig()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("partition", "random", "'partition': unknown value 'random'"),
        ("device", "tpu", "'device': unknown value 'tpu'"),
        ("beta", 0.0, "'beta': must be > 0, got 0.0"),
        ("beta", -1.0, "'beta': must be > 0, got -1.0"),
        ("num-tasks", 0, "'num-tasks': must be > 0"),
        ("lr", "fast", "'lr': expected a number"),
        ("batch-size", 1.5, "'batch-size': expected an integer"),
        ("no-such-key", 1, "'no-such-key': unknown key"),
    ],
)
def test_bad_values_name_the_key(key, value, expected):
    message = one_line_error(ConfigError, lambda: ExperimentConfig.from_run_config({key: value}))
    assert expected in message


def test_the_config_imports_nothing_of_the_library_built_on_it():
    code = (
        "import sys; from multifcl.config import ExperimentConfig; "
        "ExperimentConfig.from_run_config({'method': 'lwf', 'eval-group': 'flip'}); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('multifcl'))))"
    )
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    leaves = ["multifcl.client_schedule", "multifcl.errors"]  # import nothing of the library
    assert found.stdout.split() == ["multifcl", *sorted([*leaves, "multifcl.config"])]


@pytest.mark.parametrize(
    ("key", "value", "resolve", "expected"),
    [
        (
            "method",
            "multifl",
            method_class,
            (
                "run config key 'method': unknown method 'multifl' (choose from prototypes, "
                "finetune, multifcl, pilora, lwf, fedproto, analytic, l2p, coda-prompt, lorm; did "
                "you mean 'multifcl'?)"
            ),
        ),
        ("dataset", "mnist-x", data_source, "run config key 'dataset': unknown dataset 'mnist-x'"),
        (
            "eval-group",
            "rot45",
            group_transforms,
            (
                "run config key 'eval-group': unknown group 'rot45' (choose from flip, rot90, "
                "flip-rot90)"
            ),
        ),
    ],
)
def test_unknown_names_are_refused_where_they_are_resolved(key, value, resolve, expected):
    config = ExperimentConfig.from_run_config({key: value})  # the config holds names only
    assert one_line_error(ConfigError, lambda: check_names(config)).startswith(expected)
    assert one_line_error(ConfigError, lambda: resolve(value)).startswith(expected)


def test_imagefolder_needs_a_data_root():
    message = one_line_error(
        ConfigError, lambda: ExperimentConfig.from_run_config({"dataset": "imagefolder"})
    )
    assert "'data-root'" in message


def test_missing_data_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    message = one_line_error(
        ConfigError,
        lambda: ExperimentConfig.from_run_config(
            {"dataset": "imagefolder", "data-root": str(missing)}
        ),
    )
    assert "'data-root'" in message and "does not exist" in message and str(missing) in message


def test_empty_data_root_is_named(tmp_path):
    message = one_line_error(
        ConfigError,
        lambda: ExperimentConfig.from_run_config(
            {"dataset": "imagefolder", "data-root": str(tmp_path)}
        ),
    )
    assert "'data-root'" in message and "is empty" in message
