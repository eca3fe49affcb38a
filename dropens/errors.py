"""One exception type for bad input, so the CLI can print it as one line before training starts."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the field, the bad value and the valid choices."""


def bad_choice(field: str, value: object, choices: Iterable[object]) -> ConfigError:
    """Build the standard one-line error ``field='value' is not valid; choose one of: a, b, c``."""
    valid = ", ".join(str(c) for c in choices)
    return ConfigError(f"{field}={value!r} is not valid; choose one of: {valid}")


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise bad_choice(field, value, choices)
