"""What ends a run without a sound record, other than bad input (:class:`dropens.errors.ConfigError`).

- :class:`RunFailed`: the run started but cannot end complete (its training loss became
  non-finite, an evaluation row is missing or not finite, another process holds the run's lock);
  one line, exit status 1, no ``DONE``.
- :class:`DamagedFile`: a file dropens reads (a data cache, a checkpoint, a run record, an
  experiments file) cannot be read; one line naming the file and the fix (a ``ConfigError``:
  exit status 2).
- :class:`Stopped`: a stop signal (SIGTERM, SIGINT, SLURM's SIGUSR1) ended the command at a safe
  point; one line, exit status ``128 + signal``. A ``BaseException``, like ``KeyboardInterrupt``:
  no ``except Exception`` on the way (a study's keep-going loop, submitit's job wrapper) takes it
  for an ordinary failure of one run.
"""

from __future__ import annotations

import signal

from dropens.errors import ConfigError


class RunFailed(Exception):
    """A run that cannot complete soundly (one-line message)."""


class DamagedFile(ConfigError):
    """A file that cannot be read: the message names it and the fix."""


class Stopped(BaseException):
    """A stop signal was received; ``message`` says what was stopped and how to resume."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(signum, message)
        self.signum = int(signum)
        self.message = message

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.name}" + (f": {self.message}" if self.message else "")
