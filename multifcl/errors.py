"""The errors bad input causes; each message is one line naming the key, file or value.

This module imports nothing, so the ServerApp and the command line can name these errors
before the heavy modules load.
"""


class ConfigError(ValueError):
    """A run-config value is invalid; the message names the key and the value."""


class DataError(ValueError):
    """A data set or file cannot be used; the message names the key or file at fault."""


class FederationRefused(RuntimeError):
    """The nodes' partitions or data do not add up; the message names the node at fault."""
