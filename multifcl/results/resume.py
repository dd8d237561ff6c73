"""Whether a config may continue the run in its `resume-from` folder, checked before any
long work: the folder, its config.json and a usable checkpoint of that same run."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.results.checkpoints import Checkpoint, CheckpointError, latest_checkpoint
from multifcl.results.folder_layout import (
    CHECKPOINT_FOLDER,
    CONFIG_FILE,
    RUN_ID_KEY,
    RunFolderError,
    read_json,
)

# Keys that may change between the interrupted run and its resumption: where results go,
# how failures are handled, what is logged. Every other key changes results.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "output-dir",
        "resume-from",
        "round-timeout",
        "min-fit-fraction",
        "max-round-retries",
        "expected-clients",
        "save-task-checkpoints",
        "logger",
        "logger-group",
    }
)
KEY = "run config key 'resume-from'"


def resume_folder(config: ExperimentConfig) -> Path:
    """The existing folder named by `resume-from` (checked without reading it)."""
    folder = config.resume_from
    if folder is None:
        raise ConfigError(f"{KEY}: no run folder given")
    if not folder.is_dir():
        raise ConfigError(f"{KEY}: folder {str(folder)!r} does not exist")
    if config.output_dir is not None and config.output_dir != folder:
        raise ConfigError(
            f"run config key 'output-dir': a resumed run continues in its own folder "
            f"{str(folder)!r}; leave output-dir empty or set it to that folder"
        )
    return folder


def open_resumable_run(
    config: ExperimentConfig, warn: Callable[[str], None]
) -> tuple[Path, dict, Checkpoint]:
    """The run folder named by `resume-from`, its saved config.json and its newest usable
    checkpoint, written by that run; a one-line ConfigError when the run cannot be
    continued with `config`. Call it holding the folder's RunLock (a corrupt checkpoint
    is renamed)."""
    folder = resume_folder(config)
    try:
        saved = read_json(folder, CONFIG_FILE)
    except RunFolderError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"{KEY}: {str(folder)!r} has no readable {CONFIG_FILE}: {reason}"
        ) from None
    differing = [
        f"{key}: {before!r} -> {now!r}" for key, before, now in config_differences(saved, config)
    ]
    if differing:
        raise ConfigError(
            f"{KEY}: {str(folder)!r} was run with another config; these keys change results "
            f"and differ (saved -> now): {', '.join(differing)}"
        )
    try:
        checkpoint = latest_checkpoint(folder, warn)
    except CheckpointError as error:
        raise ConfigError(f"{KEY}: nothing to resume from: {error}") from None
    run_id = saved.get(RUN_ID_KEY)
    if checkpoint.run_id != run_id:
        raise ConfigError(
            f"{KEY}: {str(folder / CHECKPOINT_FOLDER / checkpoint.file_name)!r} was written by run "
            f"{checkpoint.run_id or '(no id)'}, not by the folder's run {run_id or '(no id)'} "
            f"({CONFIG_FILE}): another run wrote into this folder; it cannot be resumed"
        )
    return folder, saved, checkpoint


def config_differences(
    saved: dict, config: ExperimentConfig, ignored: Collection[str] = RESULT_NEUTRAL_KEYS
) -> list[tuple[str, object, object]]:
    """(key, saved value, value now) for each key outside `ignored` whose value differs. A
    key missing from an older config.json counts as its default value."""
    defaults = ExperimentConfig().to_run_config()
    differing = []
    for key, value in config.to_run_config().items():
        before = saved.get(key, defaults[key])
        if key not in ignored and before != value:
            differing.append((key, before, value))
    return differing


def check_same_clients(saved: dict, num_clients: int) -> None:
    """The partitions depend on the number of clients: it must not change on resume."""
    before = saved.get("num-clients")
    if before is not None and before != num_clients:
        raise ConfigError(
            f"run config key 'resume-from': the run had {before} clients and {num_clients} are "
            "connected now; the client partitions would differ (start as many SuperNodes)"
        )
