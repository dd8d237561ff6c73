"""The analysis figures (matplotlib, Agg backend): the CKA drift heatmap and the diffused
redundancy curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multifcl.analysis.redundancy import RedundancyPoint
from multifcl.reporting.report_figures import annotate_cells, new_figure, save_figure

MAX_ANNOTATED_CELLS = 200


def cka_drift_heatmap(drift: np.ndarray, block_labels: list[str], title: str, path: Path) -> Path:
    """Blocks (rows) x checkpoints (columns): CKA to the representation after task 1."""
    blocks, tasks = drift.shape
    size = (max(4.8, 2.6 + 0.75 * tasks), 1.8 + 0.36 * blocks)
    with new_figure(figsize=size) as (figure, axis):
        image = axis.imshow(np.ma.masked_invalid(drift), cmap="viridis", vmin=0.0, vmax=1.0)
        if drift.size <= MAX_ANNOTATED_CELLS:
            annotate_cells(axis, drift, "{:.3f}", dark_text_above=0.6, fontsize=9)
        axis.set_xticks(range(tasks), [str(t + 1) for t in range(tasks)])
        axis.set_yticks(range(blocks), block_labels)
        axis.set(xlabel="after training task", title=title.replace(": ", "\n", 1))
        figure.colorbar(image, ax=axis, fraction=0.05, pad=0.03, label="linear CKA to task 1")
        save_figure(figure, path)
    return path


def redundancy_curves(curves: list[list[RedundancyPoint]], title: str, path: Path) -> Path:
    """Accuracy and CKA to the full representation against the fraction of dimensions kept,
    one line per task checkpoint (error bars: std over the draws)."""
    with new_figure(figsize=(10, 4), columns=2) as (figure, (accuracy_axis, cka_axis)):
        from matplotlib import colormaps  # loaded (Agg backend) by new_figure

        colors = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(curves), 1)))
        for task, (curve, color) in enumerate(zip(curves, colors), start=1):
            fractions = [100 * p.fraction for p in curve]
            style = {"marker": "o", "capsize": 3, "color": color}
            accuracy, accuracy_std = [p.accuracy for p in curve], [p.accuracy_std for p in curve]
            accuracy_axis.errorbar(
                fractions, accuracy, yerr=accuracy_std, label=f"after task {task}", **style
            )
            cka, cka_std = [p.cka for p in curve], [p.cka_std for p in curve]
            cka_axis.errorbar(fractions, cka, yerr=cka_std, **style)
        accuracy_axis.set(
            xlabel="feature dimensions kept (%)",
            ylabel="prototype-classifier accuracy (%)",
            ylim=(0, 100),
            title="accuracy on random dimension subsets",
        )
        cka_axis.set(
            xlabel="feature dimensions kept (%)",
            ylabel="linear CKA to all dimensions",
            ylim=(0, 1.02),
            title="CKA of the subset to the full feature",
        )
        for axis in (accuracy_axis, cka_axis):
            axis.grid(alpha=0.3)
        accuracy_axis.legend(fontsize=8)
        figure.suptitle(title)
        save_figure(figure, path)
    return path
