"""Names and paths a user gives, checked before anything is written (one-line errors).

Study and run names become directory names under ``results_root``: they are *plain names*
(letters, digits, ``_``, ``-``, ``.``; not starting with ``.``), so no name can reach outside
``results_root`` (``study=../x``) or hide itself. Every directory a user names (``results_root``,
``data.root``, ``report --out``) is checked to be a directory, or creatable, and writable where
it will be written.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from dropens.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# run ids (dropens.results.default_run_id) may also hold "=": the same rule otherwise
RUN_ID = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*")


def check_name(field: str, value: object, pattern: re.Pattern[str] = NAME) -> str:
    """``value`` if it is a plain name (module docstring); else a one-line ConfigError."""
    if not isinstance(value, str) or not pattern.fullmatch(value) or len(value) > 200:
        raise ConfigError(
            f"{field}={value!r} is not a plain name; use letters, digits, '_', '-' and '.' "
            "(not first), e.g. my_study"
        )
    return value


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_dir(path: str | os.PathLike, field: str, writable: bool = True) -> Path:
    """``path`` as a directory that exists or can be created (and written, if ``writable``).

    Nothing is left behind: writability is probed with a temporary file in ``path`` or in its
    nearest existing ancestor, removed at once (a permission check alone is not enough: root
    passes it on a read-only file system).

    Raises:
        ConfigError: one line naming ``field``, the path and what is wrong.
    """
    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}={str(path)!r} is a file, not a directory; give a directory")
    anchor = _existing_ancestor(path)
    if not anchor.is_dir():
        raise ConfigError(
            f"{field}={str(path)!r} cannot be created: {str(anchor)!r} is a file, not a directory"
        )
    if writable:
        try:
            fd, probe = tempfile.mkstemp(dir=anchor, prefix=".dropens-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            what = "is not writable" if anchor == path else f"cannot be created in {str(anchor)!r}"
            raise ConfigError(
                f"{field}={str(path)!r} {what} ({err.strerror or err}); choose a writable directory"
            ) from None
    return path
