"""One exception type for bad input, so the CLI can print it as one line before training starts.

:class:`InputError` is the :class:`ConfigError` of bad values given to the Python API (tensors that
are not probabilities, a seed that is not an integer): the CLI prints it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the field, the bad value and the valid choices."""


class InputError(ConfigError):
    """Bad values in what the Python API was given (tensors, seeds), not in a config file.

    A :class:`ConfigError` (so ``dropens`` on the command line prints it as one ``error:`` line,
    and ``except ConfigError`` / ``except ValueError`` catch it), kept apart so a caller can tell
    "this tensor holds NaN or does not sum to 1" from "this config value is not valid". The
    message is one line naming the argument, what is wrong with it and what is valid.
    """


class NoRecords(ConfigError):
    """A study has nothing to report yet: no run record under its results root and no committed
    compact records (``dropens report --all`` skips it with one line instead of failing)."""


def bad_choice(field: str, value: object, choices: Iterable[object]) -> ConfigError:
    """Build the standard one-line error ``field='value' is not valid; choose one of: a, b, c``."""
    valid = ", ".join(str(c) for c in choices)
    return ConfigError(f"{field}={value!r} is not valid; choose one of: {valid}")


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise bad_choice(field, value, choices)
