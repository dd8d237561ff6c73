"""The report's figures, one PNG each (matplotlib with the Agg backend): accuracy curves,
Last bars, accuracy-matrix and client x class partition heatmaps, bytes per round.

Every figure colours a series by its method (`method_colour`), so a method has one colour
in every figure of `multifcl compare` and `multifcl report`; series of one colour differ by
line style."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from multifcl.reporting.byte_units import byte_unit

DPI = 130
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
}
MAX_NAMED_TICKS = 20  # above this, tick every n-th class or client
MAX_ANNOTATED_CELLS = 150  # per heatmap; beyond this the numbers would not be readable
LEGEND_OUTSIDE_FROM = 7  # curves; with more, the legend moves to the right of the axes
PARTITION_COLUMNS = 5
COLOURS = 10  # matplotlib's default cycle, C0..C9
LINE_STYLES = ("-", "--", ":", "-.")
MAX_FIGURE_WIDTH = 24.0  # inches; wider task panels wrap to more rows


def run_title(config: Mapping) -> str:
    """`<method> on <data set>, <backbone>` from a run's saved config (flwr keys); an image
    folder is named by its folder, e.g. `finetune on imagefolder cifar10-jpg, vit-tiny`."""
    return f"{config.get('method', '?')} on {data_and_backbone([config])}"


def data_and_backbone(configs: Sequence[Mapping]) -> str:
    """`<data set>, <backbone>` of runs' saved configs; differing values joined by ` / `."""
    datasets = dict.fromkeys(_dataset_name(config) for config in configs)
    backbones = dict.fromkeys(str(config.get("backbone", "?")) for config in configs)
    return f"{' / '.join(datasets)}, {' / '.join(backbones)}"


def _dataset_name(config: Mapping) -> str:
    dataset = str(config.get("dataset", "?"))
    root = str(config.get("data-root") or "").rstrip("/\\")
    return f"{dataset} {Path(root).name}" if dataset == "imagefolder" and root else dataset


def method_colour(method: str) -> str:
    """The method's colour in every figure: C0, C1, ... in the order of `METHODS`; a name that
    is not a method (a label without one) one of tab20b's colours (none is a method's) by a
    hash of the name, so it never depends on what else is drawn."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from multifcl.methods import METHODS

    names = list(METHODS)
    if method in names:
        return f"C{names.index(method) % COLOURS}"
    spare = colormaps["tab20b"].colors
    return to_hex(spare[zlib.crc32(method.encode()) % len(spare)])


def series_styles(labels: Sequence[str], methods: Mapping[str, str] | None) -> dict:
    """label -> (colour, line style): the colour of the label's method (`methods`, default:
    the label is the method), the line style counting the earlier labels of that colour."""
    styles, used = {}, Counter()
    for label in labels:
        colour = method_colour((methods or {}).get(label, label))
        styles[label] = (colour, LINE_STYLES[used[colour] % len(LINE_STYLES)])
        used[colour] += 1
    return styles


def stage_curves(
    groups: Mapping[str, Sequence[Sequence[float]]],
    path: Path,
    methods: Mapping[str, str] | None = None,
    setting: str = "",
) -> Path:
    """A_t after each task, one line per label: the mean over its runs, ± one std as a band.
    `methods` maps a label to its method (the colour); default: the label is the method.
    `setting` (data set and backbone) is the title's second line."""
    counts = {len(curves) for curves in groups.values()}
    same_count = counts.pop() if len(counts) == 1 else None
    title = "Accuracy after each task"
    if same_count and same_count > 1:
        title += f" (mean of {same_count} seeds, band ± 1 std)"
    elif same_count is None:
        title += " (mean over seeds, band ± 1 std)"
    title += f"\n{setting}" if setting else ""
    wide = len(groups) > LEGEND_OUTSIDE_FROM
    styles = series_styles(list(groups), methods)
    with new_figure(figsize=(10.0 if wide else 7.5, 4.8)) as (figure, axis):
        longest = 1
        for label, curves in groups.items():
            length = min(len(curve) for curve in curves)
            values = np.array([curve[:length] for curve in curves], dtype=float)
            steps = np.arange(1, length + 1)
            mean = values.mean(axis=0)
            name = label if same_count else f"{label} ({len(curves)} runs)"
            colour, style = styles[label]
            axis.plot(
                steps, mean, marker="o", linewidth=2, color=colour, linestyle=style, label=name
            )
            if len(curves) > 1:
                std = values.std(axis=0, ddof=1)
                band = 0.2 if len(groups) <= 4 else 0.1
                axis.fill_between(steps, mean - std, mean + std, color=colour, alpha=band)
            longest = max(longest, length)
        axis.set(
            xlabel="tasks trained",
            ylabel="A_t: CIL accuracy, mean over seen tasks (%)",
            ylim=(0, 102),  # room for markers at 100
            yticks=range(0, 101, 20),
            xlim=(0.8, longest + 0.2),
            title=title,
        )
        axis.set_xticks(_ticks(longest))
        axis.grid(alpha=0.3)
        _legend(axis, len(groups))
        save_figure(figure, path)
    return path


def last_bars(
    groups: Mapping[str, Sequence[float]],
    path: Path,
    methods: Mapping[str, str] | None = None,
    setting: str = "",
) -> Path:
    """Last accuracy per label: the mean over its runs, with ± one std as an error bar; each
    bar in its method's colour (`methods`, `setting` as in stage_curves)."""
    labels = list(groups)
    styles = series_styles(labels, methods)
    means = [float(np.mean(groups[label])) for label in labels]
    stds = [
        float(np.std(groups[label], ddof=1)) if len(groups[label]) > 1 else 0.0 for label in labels
    ]
    tilt = len(labels) > 3 or max(len(label) for label in labels) > 12
    with new_figure(figsize=(max(5.0, 1.1 * len(labels) + 2.0), 4.8)) as (figure, axis):
        positions = np.arange(len(labels))
        colours = [styles[label][0] for label in labels]
        axis.bar(positions, means, yerr=stds, capsize=6, color=colours, alpha=0.85)
        for position, mean, std, label in zip(positions, means, stds, labels):
            text = f"{mean:.1f} ± {std:.1f}" if len(groups[label]) > 1 else f"{mean:.1f}"
            axis.text(position, mean + std + 1.5, text, ha="center", va="bottom", fontsize=10)
        axis.set_xticks(
            positions, labels, rotation=25 if tilt else 0, ha="right" if tilt else "center"
        )
        axis.set_yticks(range(0, 101, 20))
        axis.set(
            ylabel="Last: A_T, CIL accuracy (%)",
            ylim=(0, 110),
            title="Last accuracy (error bar: ± 1 std over seeds)"
            + (f"\n{setting}" if setting else ""),
        )
        axis.grid(axis="y", alpha=0.3)
        save_figure(figure, path)
    return path


def accuracy_matrix(matrix: Sequence[Sequence[float | None]], title: str, path: Path) -> Path:
    """The CIL accuracy a[t][j] as a heatmap; cells not yet defined (j > t) stay blank."""
    size = len(matrix)
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    side = max(4.8, 0.6 * size + 2.2)
    with new_figure(figsize=(side + 1.0, side)) as (figure, axis):
        image = axis.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
        if size * size <= MAX_ANNOTATED_CELLS:
            annotate_cells(axis, values, "{:.0f}", dark_text_above=60, fontsize=10)
        ticks = _ticks(size)
        axis.set_xticks([t - 1 for t in ticks], [str(t) for t in ticks])
        axis.set_yticks([t - 1 for t in ticks], [str(t) for t in ticks])
        axis.set(xlabel="evaluated on task j", ylabel="after training task t", title=title)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="CIL accuracy (%)")
        save_figure(figure, path)
    return path


def partition(counts: Mapping, title: str, path: Path) -> Path:
    """Per task, a clients x classes heatmap of training-sample counts (from partition.json).

    All tasks share one colour scale; counts are written in the cells while they fit.
    """
    tasks = counts["tasks"]
    held = counts.get("partition_ids", list(range(counts["num_clients"])))  # one row each
    num_clients = len(held)
    classes_per_task = max(len(task["classes"]) for task in tasks)
    annotated = num_clients * classes_per_task <= MAX_ANNOTATED_CELLS
    cell_width, cell_height = (0.5, 0.32) if annotated else (0.22, 0.18)  # inches
    width = max(2.8, cell_width * classes_per_task + 1.4)
    height = max(2.6, cell_height * num_clients + 1.8)
    columns = max(1, min(len(tasks), PARTITION_COLUMNS, int(MAX_FIGURE_WIDTH // width)))
    rows = math.ceil(len(tasks) / columns)
    vmax = max(max(max(row) for row in task["counts"]) for task in tasks) or 1
    size = (columns * width + 1.2, rows * height + 0.8)
    with new_figure(figsize=size, columns=columns, rows=rows) as (figure, axes):
        flat = np.atleast_1d(axes).ravel()
        for axis, task in zip(flat, tasks):
            grid = np.array(task["counts"], dtype=float)
            image = axis.imshow(grid, cmap="Blues", vmin=0, vmax=vmax, aspect="auto")
            if annotated:
                for (client, column), value in np.ndenumerate(grid):
                    color = "white" if value > 0.6 * vmax else "black"
                    axis.text(
                        column,
                        client,
                        f"{value:.0f}",
                        ha="center",
                        va="center",
                        color=color,
                        fontsize=9,
                    )
            _class_ticks(axis, task["classes"], counts["class_names"])
            client_ticks = list(range(0, num_clients, math.ceil(num_clients / MAX_NAMED_TICKS)))
            axis.set_yticks(client_ticks, [str(held[c]) for c in client_ticks])
            axis.set_title(f"task {task['task']}")
        for axis in flat[len(tasks) :]:
            axis.set_visible(False)
        for axis in flat[::columns]:
            axis.set_ylabel("client")
        figure.colorbar(
            image, ax=list(flat[: len(tasks)]), fraction=0.02, pad=0.02, label="training samples"
        )
        figure.suptitle(title)
        save_figure(figure, path)
    return path


def _class_ticks(axis, classes: Sequence[int], names: Sequence[str]) -> None:
    """Class names when at most MAX_NAMED_TICKS (tilted when long), else every n-th class id."""
    if len(classes) <= MAX_NAMED_TICKS:
        labels = [names[c] for c in classes]
        tilted = sum(len(label) for label in labels) > 16
        axis.set_xticks(
            range(len(classes)),
            labels,
            rotation=45 if tilted else 0,
            ha="right" if tilted else "center",
            rotation_mode="anchor" if tilted else "default",
        )
        return
    step = math.ceil(len(classes) / MAX_NAMED_TICKS)
    axis.set_xticks(range(0, len(classes), step), [str(c) for c in classes[::step]])
    axis.set_xlabel("class id (stream order)")


def bytes_per_round(
    groups: Mapping[str, Sequence[Sequence[tuple[int, float, float]]]],
    path: Path,
    methods: Mapping[str, str] | None = None,
    setting: str = "",
) -> Path:
    """Bytes up and down per round (summed over clients), one line per label (`methods` and
    `setting` as in stage_curves).

    Each run is a list of (task, bytes up, bytes down) per round; runs of a label are averaged.
    A logarithmic axis is used when the values span more than a factor of 50.
    """
    every = [
        v for runs in groups.values() for run in runs for _, up, down in run for v in (up, down)
    ]
    scale, unit = byte_unit(max(every, default=0.0))
    positive = [v for v in every if v > 0]
    logarithmic = bool(positive) and max(positive) / min(positive) > 50
    longest_tasks: list[int] = []
    styles = series_styles(list(groups), methods)
    with new_figure(figsize=(12, 4.6), columns=2) as (figure, axes):
        for label, runs in groups.items():
            length = min(len(run) for run in runs)
            rounds = np.arange(1, length + 1)
            for axis, column in zip(axes, (1, 2)):
                per_run = [[entry[column] for entry in run[:length]] for run in runs]
                colour, style = styles[label]
                mean = np.mean(per_run, axis=0) / scale
                axis.plot(rounds, mean, marker="o", color=colour, linestyle=style, label=label)
            if length > len(longest_tasks):
                longest_tasks = [entry[0] for entry in runs[0][:length]]
        starts = [
            i + 0.5
            for i in range(1, len(longest_tasks))
            if longest_tasks[i] != longest_tasks[i - 1]
        ]
        titles = (
            "Bytes up per round (all clients to server)",
            "Bytes down per round (server to all clients)",
        )
        for axis, title in zip(axes, titles):
            for start in starts:
                axis.axvline(start, color="grey", linestyle=":", linewidth=1)
            axis.set(xlabel="round (dotted lines: a new task starts)", ylabel=unit, title=title)
            axis.xaxis.set_major_locator(_integer_locator())
            if logarithmic:
                _plain_log_axis(axis)
            axis.grid(alpha=0.3)
        _legend(axes[1], len(groups))
        if setting:
            figure.suptitle(setting)
        save_figure(figure, path)
    return path


def annotate_cells(
    axis, values: np.ndarray, fmt: str, dark_text_above: float, fontsize: int
) -> None:
    """Write each finite value of a heatmap into its cell, dark on light (viridis) cells."""
    for (row, column), value in np.ndenumerate(values):
        if np.isfinite(value):
            color = "black" if value > dark_text_above else "white"
            text = fmt.format(value)
            axis.text(column, row, text, ha="center", va="center", color=color, fontsize=fontsize)


@contextmanager
def new_figure(figsize: tuple[float, float], columns: int = 1, rows: int = 1):
    """(figure, axes) in the report's style, closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(rows, columns, figsize=figsize, layout="constrained")
        try:
            yield figure, axes
        finally:
            plt.close(figure)


def save_figure(figure, path: Path) -> None:
    """The figure as a PNG at `path` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


def _legend(axis, entries: int) -> None:
    if entries > LEGEND_OUTSIDE_FROM:
        axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        axis.legend(loc="best")


def _plain_log_axis(axis) -> None:
    """A logarithmic y axis ticked at 1, 2, 5 x 10^k with plain numbers (no 6 x 10^2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _ticks(count: int) -> list[int]:
    """1..count, thinned to at most MAX_NAMED_TICKS labels."""
    return list(range(1, count + 1, math.ceil(count / MAX_NAMED_TICKS)))
