"""Compare methods or presets over seeds, through the same simulation path as `flwr run`.

    multifcl compare --methods prototypes finetune multifcl --seeds 0 1 2 --out runs/cifar10 \\
        --overrides "dataset='imagefolder' data-root='/abs/cifar10-jpg' num-tasks=5"
    python -m multifcl.compare --methods configs/ablation/*.toml --seeds 0 --out runs/ablation

Each row (a method name, or a preset .toml file whose stem is its label) runs once per seed
with `flwr run` on a local simulation SuperLink, into OUT/runs/<label>-seed<k>/. Calling
again with the same OUT skips the runs that finished (metrics.json holds every task); an
unfinished leftover is moved to OUT/unfinished/ and run again. Then OUT gets comparison.md
and comparison.csv (Last, Avg, Forgetting, BWT and TIL Last as mean ± std over seeds, bytes
and seconds per round), accuracy_curves.png, last_accuracy.png and bytes_per_round.png;
flwr's log of each run is kept in OUT/logs/.

With --grid "lr=1e-3,1e-2 local-epochs=1,5", each row first runs every grid point on
--tuning-seed with --val-fraction of its training samples held out (OUT/tuning/), the point
with the best validation Avg is chosen per row (multifcl.tuning_grid), and the chosen
point runs over the seeds; comparison.md then holds the grid table.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Self

from multifcl.cli import CommandError
from multifcl.config import FIELD_TYPES, ConfigError, ExperimentConfig
from multifcl.config_names import check_names
from multifcl.interrupts import signals_held, sigterm_as_interrupt
from multifcl.metrics.accuracy_history import FORMULAS
from multifcl.reporting import report_figures
from multifcl.reporting.comparison_table import comparison_rows, markdown_table, write_csv
from multifcl.reporting.run_results import RunResults, is_finished
from multifcl.results.resume import config_differences
from multifcl.results.run_lock import RunLock
from multifcl.tuning_grid import (
    DEFAULT_TUNING_SEED,
    DEFAULT_VAL_FRACTION,
    GridValue,
    HyperGrid,
    choose,
    grid_table,
    point_folder,
    point_text,
)

SUMMARY = "run methods or presets over seeds with flwr run, then tabulate and plot them"
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: pyproject.toml and its modules
RESERVED_KEYS = {  # set per run by the runner
    "seed": "use --seeds",
    "output-dir": "use --out",
    "resume-from": "a comparison reruns its unfinished runs itself",
}
FEDERATION_DEFAULTS = {"num-supernodes": 2, "client-resources-num-cpus": 1}
KEY_VALUE = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # flwr's own `-c` syntax
# keys that do not change a run's results: a finished run is reused whatever they say
CONFIG_KEYS_NOT_COMPARED = ("output-dir", "logger", "logger-group")
EXAMPLES = (
    "multifcl compare --methods prototypes finetune --seeds 0 1 --out runs/first-compare",
    (
        "multifcl compare --methods configs/ablation/*.toml --seeds 0 --out runs/ablation "
        "--overrides \"backbone='efficientnet-lite0' logger='wandb'\""
    ),
    'multifcl compare --methods finetune lwf --seeds 0 1 2 --out runs/tuned --grid "lr=1e-3,1e-2"',
)

RunConfig = dict[str, bool | int | float | str]


class RunFailed(CommandError):
    """A planned run did not complete; rerunning the comparison resumes from it."""

    exit_status = 1


@dataclass(frozen=True)
class PlannedRun:
    """One row and seed: where it writes, what it overrides, and the config that gives."""

    label: str
    seed: int
    run_dir: Path
    overrides: RunConfig  # the preset's pairs, then --overrides, then seed and output-dir
    config: ExperimentConfig  # the overrides over the app's defaults, validated
    point: str = ""  # with --grid: the grid point it runs (`lr=0.001 local-epochs=5`)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def describe(self) -> str:
        """`finetune lr=0.001 seed 0`: the row, its grid point, the seed."""
        return " ".join(part for part in (self.label, self.point, f"seed {self.seed}") if part)

    def overrides_text(self) -> str:
        """The overrides as one `flwr run -c` string."""
        return key_values_text(self.overrides)


@dataclass(frozen=True)
class TuningPlan:
    """With --grid: each row's tuning run per grid point (--tuning-seed, --val-fraction),
    and its runs over --seeds for each point, all validated; one point is chosen per row."""

    grid: HyperGrid
    seed: int
    val_fraction: float
    runs: dict[str, list[PlannedRun]]  # by row label, one per grid point in grid order
    finals: dict[str, list[list[PlannedRun]]]  # by row label and grid point: over --seeds
    chosen: dict[str, int] | None = None  # by row label: the chosen grid point
    scores: dict[str, list[tuple[float, float]]] | None = None  # validation (Avg, Last)


@dataclass(frozen=True)
class ComparisonPlan:
    """Every planned run, in order (row by row, seed by seed), and the shared settings.

    With --grid, `runs` is empty until the tuning runs have chosen each row's point
    (`run_comparison` does that)."""

    out: Path
    labels: list[str]
    seeds: list[int]
    runs: list[PlannedRun]
    shared_overrides: RunConfig
    federation: RunConfig
    tuning: TuningPlan | None = None

    def summary(self) -> str:
        """How many runs go where, in one line."""
        rows, seeds = len(self.labels), len(self.seeds)
        if self.tuning is None:
            return f"{len(self.runs)} runs ({rows} rows x {seeds} seeds) -> {self.out}"
        points = len(self.tuning.grid.points)
        return (
            f"{rows * points} tuning runs ({rows} rows x {points} grid points, seed "
            f"{self.tuning.seed}), then {rows * seeds} runs ({rows} rows x {seeds} seeds) "
            f"-> {self.out}"
        )

    def tuning_runs(self) -> list[PlannedRun]:
        """With --grid: every tuning run, row by row, grid point by point."""
        if self.tuning is None:
            return []
        return [run for label in self.labels for run in self.tuning.runs[label]]

    @property
    def num_clients(self) -> int:
        return int(self.federation["num-supernodes"])

    def federation_text(self) -> str:
        return key_values_text(self.federation)


Launch = Callable[[PlannedRun], None]  # runs one planned run to the end, into run.run_dir


def plan_comparison(
    rows: list[str],
    seeds: list[int],
    out: Path,
    overrides: str = "",
    federation: str = "",
    app_dir: Path = APP_DIR,
    grid: str = "",
    tuning_seed: int | None = None,
    val_fraction: float | None = None,
) -> ComparisonPlan:
    """Validate every input and every run's config (one-line errors) before anything runs;
    with `grid`, every grid point's tuning run and final runs of every row."""
    if not rows:
        raise CommandError("--methods: name at least one method or preset file")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CommandError(f"--seeds: expected distinct integers >= 0, got {seeds}")
    defaults = app_defaults(app_dir)
    shared = parse_key_values(overrides, "--overrides")
    _refuse_reserved(shared, "--overrides")
    settings = {**FEDERATION_DEFAULTS, **parse_key_values(federation, "--federation")}
    clients = settings["num-supernodes"]
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise CommandError(f"--federation: num-supernodes must be an integer >= 1, got {clients!r}")
    out = Path(out).expanduser().resolve()
    row_pairs = dict(_row(row) for row in rows)
    if len(row_pairs) != len(rows):
        raise CommandError(f"--methods: two rows have the same label (method or file stem): {rows}")
    planner = _RunPlanner(defaults, shared, clients)
    plan = ComparisonPlan(out, list(row_pairs), list(seeds), [], shared, settings)
    if grid or tuning_seed is not None or val_fraction is not None:
        tuning = _plan_tuning(planner, row_pairs, plan, grid, tuning_seed, val_fraction)
        return dataclasses.replace(plan, tuning=tuning)
    runs = [
        planner.run(label, seed, out / "runs" / f"{label}-seed{seed}", pairs)
        for label, pairs in row_pairs.items()
        for seed in seeds
    ]
    return dataclasses.replace(plan, runs=runs)


class _RunPlanner:
    """Builds one PlannedRun: its overrides over the app's defaults, validated."""

    def __init__(self, defaults: RunConfig, shared: RunConfig, clients: int) -> None:
        self.defaults, self.shared, self.clients = defaults, shared, clients

    def run(
        self,
        label: str,
        seed: int,
        run_dir: Path,
        pairs: RunConfig,
        point: Mapping[str, GridValue] | None = None,
        extra: RunConfig | None = None,
    ) -> PlannedRun:
        """The row's `pairs`, --overrides, the grid `point`, `extra`, seed and output-dir."""
        values = {"logger-group": label, **pairs, **self.shared, **(point or {}), **(extra or {})}
        values |= {"seed": seed, "output-dir": str(run_dir)}
        where = f"--grid: {label} with {point_text(point)}" if point else label
        try:
            config = check_names(ExperimentConfig.from_run_config({**self.defaults, **values}))
        except ConfigError as error:
            raise CommandError(f"{where}: {error}") from None
        if config.expected_clients not in (0, self.clients):
            raise CommandError(
                f"{label}: run config key 'expected-clients': the config expects "
                f"{config.expected_clients} clients, --federation gives {self.clients} "
                f'(pass --federation "num-supernodes={config.expected_clients}")'
            )
        text = point_text(point) if point else ""
        return PlannedRun(label, seed, run_dir, _absolute_paths(values, config), config, text)


def _plan_tuning(
    planner: _RunPlanner,
    row_pairs: dict[str, RunConfig],
    plan: ComparisonPlan,
    grid_text: str,
    tuning_seed: int | None,
    val_fraction: float | None,
) -> TuningPlan:
    """Every row's tuning run per grid point and its runs over --seeds for every point."""
    if not grid_text:
        option = "--tuning-seed" if tuning_seed is not None else "--val-fraction"
        raise CommandError(f"{option}: applies to a comparison with --grid only")
    grid = HyperGrid.parse(grid_text)
    seed = DEFAULT_TUNING_SEED if tuning_seed is None else tuning_seed
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0 <= seed < 2**32:
        raise CommandError(f"--tuning-seed: must be in [0, 2**32), got {seed}")
    if not 0 < fraction < 1:
        raise CommandError(
            f"--val-fraction: the tuning runs need a share in (0, 1), got {fraction}"
        )
    _check_grid_keys(grid, row_pairs, plan.shared_overrides)
    runs: dict[str, list[PlannedRun]] = {}
    finals: dict[str, list[list[PlannedRun]]] = {}
    for label, pairs in row_pairs.items():
        runs[label], finals[label] = [], []
        for point in grid.points:
            folder = plan.out / "tuning" / f"{label}-{point_folder(point)}-seed{seed}"
            extra = {"val-fraction": fraction, "logger-group": f"{label}-tuning"}
            runs[label].append(planner.run(label, seed, folder, pairs, point, extra))
            finals[label].append(
                [
                    planner.run(label, k, plan.out / "runs" / f"{label}-seed{k}", pairs, point)
                    for k in plan.seeds
                ]
            )
    names = [run.name for row in runs.values() for run in row]
    if len(set(names)) != len(names):
        raise CommandError(f"--grid: two grid points give one folder name; {names}")
    return TuningPlan(grid, seed, fraction, runs, finals)


def _check_grid_keys(grid: HyperGrid, row_pairs: dict[str, RunConfig], shared: RunConfig) -> None:
    """A grid key --overrides also sets, or a val-fraction set elsewhere, is one line."""
    for key in grid.axes:
        if key in shared:
            raise CommandError(f"--grid: key {key!r} is also set by --overrides; set it in one")
    for where, pairs in [("--overrides", shared), *row_pairs.items()]:
        if "val-fraction" in pairs:
            raise CommandError(
                f"{where}: sets 'val-fraction'; with --grid the tuning runs hold out "
                "--val-fraction and the final runs train on every training sample"
            )


def run_comparison(
    plan: ComparisonPlan, launch: Launch, echo: Callable[[str], None] = print
) -> list[Path]:
    """Run what is not finished yet, then write the table and plots; return those files.
    With --grid: the tuning runs first, then each row's chosen point over --seeds."""
    if plan.tuning is not None:
        _run_pending(plan.tuning_runs(), plan, launch, echo, "tuning ")
        plan = select_points(plan)
        for label in plan.labels:
            point = plan.tuning.runs[label][plan.tuning.chosen[label]].point
            echo(f"{label}: chose {point} (validation Avg, tuning seed {plan.tuning.seed})")
    _run_pending(plan.runs, plan, launch, echo)
    return write_comparison(plan)


def select_points(plan: ComparisonPlan) -> ComparisonPlan:
    """The plan with each row's grid point chosen by its finished tuning run's validation
    Avg (first in grid order on a tie) and the chosen points' runs over --seeds."""
    tuning = plan.tuning
    scores = {
        label: [_validation_scores(run) for run in tuning.runs[label]] for label in plan.labels
    }
    chosen = {label: choose([avg for avg, _ in scores[label]]) for label in plan.labels}
    runs = [run for label in plan.labels for run in tuning.finals[label][chosen[label]]]
    tuning = dataclasses.replace(tuning, chosen=chosen, scores=scores)
    return dataclasses.replace(plan, runs=runs, tuning=tuning)


def _score_text(run: PlannedRun) -> str:
    """A finished run's score in words: validation Avg for a tuning run, else test Last."""
    metrics = RunResults.load(run.run_dir).metrics
    if run.config.val_fraction > 0:
        return f"validation Avg {metrics['val']['avg']:.2f}"
    return f"Last {metrics['last']:.2f}"


def _validation_scores(run: PlannedRun) -> tuple[float, float]:
    """(Avg, Last) on the validation split of a finished tuning run."""
    metrics = RunResults.load(run.run_dir).metrics
    if "val" not in metrics:
        raise CommandError(f"{run.run_dir} has no validation scores (val in metrics.json)")
    return metrics["val"]["avg"], metrics["val"]["last"]


def _run_pending(
    runs: list[PlannedRun],
    plan: ComparisonPlan,
    launch: Launch,
    echo: Callable[[str], None],
    stage: str = "",
) -> None:
    """Launch each of `runs` not finished yet (a finished one is checked against its
    plan); an unfinished leftover is moved aside first. `stage` prefixes the lines."""
    done_before = {run.name for run in runs if is_finished(run.run_dir)}
    for run in runs:
        if run.name in done_before:
            _check_same_config(run, plan.num_clients)
    started = time.monotonic()
    pending = len(runs) - len(done_before)
    durations: list[float] = []
    for index, run in enumerate(runs, start=1):
        prefix = f"[{stage}{index}/{len(runs)}] {run.describe()}"
        if run.name in done_before:
            echo(f"{prefix}: finished before, skipped")
            continue
        if is_finished(run.run_dir):  # finished meanwhile by another compare on this folder
            _check_same_config(run, plan.num_clients)
            pending -= 1
            echo(f"{prefix}: finished meanwhile by another process, skipped")
            continue
        if run.run_dir.exists():  # refused while another process still runs it
            with RunLock(run.run_dir, None, where=f"{prefix}: the unfinished leftover"):
                moved = _move_aside(run.run_dir, plan.out / "unfinished")
            echo(f"{prefix}: moved the unfinished leftover to {moved}")
        echo(f"{prefix}: running -> {run.run_dir} (elapsed {_clock(time.monotonic() - started)})")
        run_started = time.monotonic()
        launch(run)
        if not is_finished(run.run_dir):
            raise RunFailed(f"{prefix}: the run ended without finishing every task ({run.run_dir})")
        durations.append(time.monotonic() - run_started)
        left = (pending - len(durations)) * sum(durations) / len(durations)
        echo(
            f"{prefix}: {_score_text(run)} in {_clock(durations[-1])} "
            f"(elapsed {_clock(time.monotonic() - started)}, about {_clock(left)} left)"
        )


def write_comparison(plan: ComparisonPlan) -> list[Path]:
    """comparison.md, comparison.csv and the plots, from the finished runs of the plan."""
    groups = {
        label: [RunResults.load(run.run_dir) for run in plan.runs if run.label == label]
        for label in plan.labels
    }
    rows = comparison_rows(groups)
    header = (
        "# Comparison\n\n"
        f"Rows: {', '.join(plan.labels)}; seeds: {' '.join(map(str, plan.seeds))}; "
        f"overrides: `{key_values_text(plan.shared_overrides) or 'none'}`; "
        f"federation: `{plan.federation_text()}`"
        f"{'; tuned per row by a grid (see Tuning below)' if plan.tuning else ''}.\n\n"
        "CIL accuracy in percent, mean ± std over seeds (std with ddof=1; n/a for one seed). "
        f"Forgetting: {FORMULAS['forgetting']}; BWT: {FORMULAS['bwt']} (a[t][j]: "
        f"{FORMULAS['a[t][j]']}). Bytes per round are summed over clients; bytes, seconds: "
        "mean over rounds (rounds.csv), then over seeds.\n\n"
    )
    markdown = plan.out / "comparison.md"
    markdown.write_text(header + markdown_table(rows) + _tuning_section(plan))
    written = [markdown, write_csv(rows, plan.out / "comparison.csv")]
    methods = {label: runs[0].config["method"] for label, runs in groups.items()}  # colours
    setting = report_figures.data_and_backbone([r.config for runs in groups.values() for r in runs])
    written.append(
        report_figures.stage_curves(
            {label: [r.metrics["stage_accuracy"] for r in runs] for label, runs in groups.items()},
            plan.out / "accuracy_curves.png",
            methods,
            setting,
        )
    )
    written.append(
        report_figures.last_bars(
            {label: [r.metrics["last"] for r in runs] for label, runs in groups.items()},
            plan.out / "last_accuracy.png",
            methods,
            setting,
        )
    )
    written.append(
        report_figures.bytes_per_round(
            {label: [r.bytes_per_round() for r in runs] for label, runs in groups.items()},
            plan.out / "bytes_per_round.png",
            methods,
            setting,
        )
    )
    return written


def _tuning_section(plan: ComparisonPlan) -> str:
    """With --grid: the grid, each row's chosen point and every point's validation scores."""
    tuning = plan.tuning
    if tuning is None or tuning.chosen is None:
        return ""
    chosen = "; ".join(
        f"{label}: `{tuning.runs[label][index].point}`" for label, index in tuning.chosen.items()
    )
    return (
        f"\n## Tuning\n\nGrid: `{tuning.grid.text}` ({len(tuning.grid.points)} points per row), "
        f"each point run once on tuning seed {tuning.seed} with val-fraction "
        f"{tuning.val_fraction} (a share of each class's training samples held out); the "
        "point with the highest validation Avg was chosen (the first in grid order on a "
        "tie) and run over the seeds above on every training sample. The test set played "
        f"no part in the choice.\n\nChosen: {chosen}.\n\n"
        + grid_table(tuning.grid, tuning.scores, tuning.chosen)
    )


class FlowerLauncher:
    """Runs planned runs with `flwr run` on a local simulation SuperLink that it owns.

    The SuperLink starts with the first run and is ended on exit (use as a context manager).
    """

    def __init__(self, plan: ComparisonPlan, app_dir: Path = APP_DIR) -> None:
        self.app_dir = app_dir
        self.federation = plan.federation_text()
        self.logs = plan.out / "logs"
        self.workdir = plan.out
        self._flower = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self._flower is not None:
            with signals_held():  # a second Ctrl-C must not leave the SuperLink running
                self._flower.close()

    def __call__(self, run: PlannedRun) -> None:
        from multifcl.local_flower import LocalFlower, PortInUse

        if self._flower is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            try:
                self._flower = LocalFlower(workdir=self.workdir)
            except (PortInUse, ValueError) as error:
                raise CommandError(str(error)) from None
        try:
            result = self._flower.run(self.app_dir, run.overrides_text(), self.federation)
        except RuntimeError as error:
            raise RunFailed(f"{run.name}: {error}") from None
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{run.name}.log"
        log.write_text(result.logs)
        if not result.completed:
            raise RunFailed(
                f"{run.name}: flwr run {result.run_id} {result.status}: "
                f"{result.details.strip() or 'no details'} (log: {log})"
            )


def app_defaults(app_dir: Path) -> RunConfig:
    """The run-config defaults of the Flower app (`[tool.flwr.app.config]` in pyproject.toml)."""
    try:
        pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())
        return dict(pyproject["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise CommandError(
            f"--app: {str(app_dir)!r} has no readable pyproject.toml with "
            f"[tool.flwr.app.config] ({type(error).__name__}: {error})"
        ) from None


def parse_key_values(text: str, option: str) -> RunConfig:
    """`key=value ...` in flwr's `-c` syntax (TOML values: 'text', 1, 0.5, true)."""
    pairs = KEY_VALUE.findall(text)
    leftover = KEY_VALUE.sub("", text).strip()
    if leftover:
        raise CommandError(f"{option}: {leftover!r} is not key=value")
    try:
        return tomllib.loads("\n".join(f"{key} = {value}" for key, value in pairs))
    except tomllib.TOMLDecodeError as error:
        raise CommandError(
            f"{option}: {text!r} is not key=value pairs with TOML values "
            f"(strings in quotes, e.g. dataset='digits' lr=0.01 use-experts=false): {error}"
        ) from None


def _row(row: str) -> tuple[str, RunConfig]:
    """A row's label and its overrides: a preset file's pairs, or `method=<name>`."""
    if not row.endswith(".toml"):
        from multifcl.methods import METHODS

        if row not in METHODS:
            raise CommandError(
                f"--methods: {row!r} is neither a method ({', '.join(METHODS)}) "
                "nor a preset .toml file"
            )
        return row, {"method": row}
    pairs = read_preset(row, "--methods")
    _refuse_reserved(pairs, f"preset file {row!r}")
    return Path(row).stem, pairs


def read_preset(file: str, option: str) -> RunConfig:
    """A preset .toml file's flat `key = value` pairs, or one line naming `option` and file."""
    try:
        pairs = tomllib.loads(Path(file).read_text())
    except OSError as error:
        raise CommandError(f"{option}: preset file {file!r} cannot be read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise CommandError(f"{option}: preset file {file!r} is not valid TOML: {error}") from None
    for key, value in pairs.items():
        if not isinstance(value, bool | int | float | str):
            raise CommandError(f"{option}: preset file {file!r}: key {key!r} is not a flat value")
    return pairs


def _refuse_reserved(pairs: Mapping[str, object], where: str) -> None:
    for key, hint in RESERVED_KEYS.items():
        if key in pairs:
            raise CommandError(f"{where}: sets {key!r}, which the runner sets per run ({hint})")


def _absolute_paths(values: RunConfig, config: ExperimentConfig) -> RunConfig:
    """Path keys as the absolute paths the config resolved (the ServerApp runs elsewhere)."""
    resolved = dict(values)
    for key, value in values.items():
        name = key.replace("-", "_")
        if FIELD_TYPES.get(name) == "Path | None" and isinstance(value, str) and value.strip():
            resolved[key] = str(getattr(config, name))
    return resolved


def _check_same_config(run: PlannedRun, num_clients: int) -> None:
    """Refuse to reuse a finished run whose saved config differs from the planned one."""
    saved = RunResults.load(run.run_dir).config
    differing = config_differences(saved, run.config, ignored=CONFIG_KEYS_NOT_COMPARED)
    if saved.get("num-clients", num_clients) != num_clients:
        differing.append(("num-clients", saved["num-clients"], num_clients))
    if differing:
        key, before, wanted = differing[0]
        raise CommandError(
            f"{run.run_dir} finished with {key}={before!r} but this comparison asks for "
            f"{key}={wanted!r}; use another --out or remove that run"
        )


def _move_aside(folder: Path, parking: Path) -> Path:
    parking.mkdir(parents=True, exist_ok=True)
    target = parking / f"{folder.name}-{datetime.now():%Y%m%d-%H%M%S-%f}"
    shutil.move(folder, target)
    return target


def _toml_value(value: bool | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "'" not in value:
            return f"'{value}'"
        if '"' in value or "\\" in value:
            raise CommandError(f"value {value!r} holds both quote kinds; flwr cannot take it")
        return f'"{value}"'
    return repr(value)


def key_values_text(pairs: RunConfig) -> str:
    """`key=value ...` as flwr's `-c` and `--federation-config` take them."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in pairs.items())


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        nargs="+",
        required=True,
        metavar="ROW",
        help="method names (e.g. prototypes finetune multifcl) or preset .toml files",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="default: 0")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder; the same folder resumes"
    )
    parser.add_argument(
        "--overrides", default="", help="run-config pairs for every run: \"k='text' n=1 x=0.5\""
    )
    parser.add_argument(
        "--federation",
        default="",
        help="flwr --federation-config pairs; num-supernodes is the number of clients "
        "(default: num-supernodes=2 client-resources-num-cpus=1)",
    )
    parser.add_argument(
        "--grid",
        default="",
        help='hyper-parameters to tune per row, e.g. "lr=1e-4,1e-3 local-epochs=1,5": each '
        "point runs on --tuning-seed with --val-fraction held out, the best validation Avg "
        "is then run over --seeds",
    )
    parser.add_argument(
        "--tuning-seed",
        type=int,
        default=None,
        help=f"with --grid: the tuning runs' seed (default: {DEFAULT_TUNING_SEED})",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"with --grid: the tuning runs' validation share (default: {DEFAULT_VAL_FRACTION})",
    )
    parser.add_argument("--app", type=Path, default=APP_DIR, help="the Flower app folder")


class Interrupted(CommandError):
    """SIGINT or SIGTERM: the runs' processes are ended; the same command continues."""

    exit_status = 130


def plan_from_arguments(args: argparse.Namespace) -> ComparisonPlan:
    """The plan of the command line's arguments (`add_arguments`), validated."""
    return plan_comparison(
        args.methods,
        args.seeds,
        args.out,
        args.overrides,
        args.federation,
        args.app.resolve(),
        args.grid,
        args.tuning_seed,
        args.val_fraction,
    )


def continue_command(args: argparse.Namespace) -> str:
    """The command line that continues this comparison (finished runs are skipped)."""
    words = ["multifcl", "compare", "--methods", *args.methods]
    words += ["--seeds", *map(str, args.seeds), "--out", str(args.out)]
    options = (
        ("--overrides", args.overrides),
        ("--federation", args.federation),
        ("--grid", args.grid),
        ("--tuning-seed", args.tuning_seed),
        ("--val-fraction", args.val_fraction),
    )
    for option, value in options:
        if value not in ("", None):
            words += [option, str(value)]
    if args.app.resolve() != APP_DIR:
        words += ["--app", str(args.app)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    plan = plan_from_arguments(args)
    print(plan.summary())
    try:
        with sigterm_as_interrupt(), FlowerLauncher(plan, args.app.resolve()) as launch:
            written = run_comparison(plan, launch)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the runs' processes are ended. Continue with: {continue_command(args)}"
        ) from None
    print()
    print((plan.out / "comparison.md").read_text())
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    from multifcl.cli import main

    sys.exit(main(["compare", *sys.argv[1:]]))
