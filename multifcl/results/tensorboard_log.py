"""TensorBoard event files (`logger = "tensorboard"`), a `run_loggers.Sink`.

Watch a run live with `tensorboard --logdir <output-dir>/tensorboard`.
"""

from __future__ import annotations

from pathlib import Path

from multifcl.results.run_loggers import Scalars


class TensorBoardLog:
    """Each scalar as a TensorBoard scalar at its axis's step."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(folder))

    def write(self, scalars: Scalars) -> None:
        for tag, value in scalars.values.items():
            self._writer.add_scalar(tag, value, scalars.step)
        self._writer.flush()

    def finish(self, metrics: dict, plot: Path) -> None:
        self._writer.close()
