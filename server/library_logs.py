"""The library logs through `logging.getLogger("multifcl....")` and imports no Flower; in a
Flower process its records at INFO and above go where Flower's own go (the terminal of
`flwr run --stream`, `flwr log`)."""

from __future__ import annotations

import logging

from flwr.common.logger import FLOWER_LOGGER

LIBRARY_LOGGER = logging.getLogger("multifcl")


def route_library_logs_to_flower() -> None:
    """Give the library's logger Flower's handlers, once per process."""
    LIBRARY_LOGGER.setLevel(logging.INFO)
    for handler in FLOWER_LOGGER.handlers:
        if handler not in LIBRARY_LOGGER.handlers:
            LIBRARY_LOGGER.addHandler(handler)
