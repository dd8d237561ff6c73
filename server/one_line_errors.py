"""A bad run config ends the run with its one-line reason, not with a traceback.

Flower logs an exception that leaves the ServerApp with its full traceback (about 35 lines
around our one line). For the errors whose message is the whole story (a run-config value,
a missing data set) this filter on Flower's logger keeps the message and drops the trace.
"""

from __future__ import annotations

import logging

from flwr.common.logger import FLOWER_LOGGER


class OneLineErrors(logging.Filter):
    """Turns a log record carrying one of `kinds` into that error's message alone."""

    def __init__(self, kinds: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.kinds):
            record.msg, record.args = "%s", (str(error),)
            record.exc_info, record.exc_text = None, None
        return True


def log_without_traceback(*kinds: type[BaseException]) -> None:
    """Install the filter on Flower's logger once per process."""
    if not any(isinstance(f, OneLineErrors) for f in FLOWER_LOGGER.filters):
        FLOWER_LOGGER.addFilter(OneLineErrors(kinds))
