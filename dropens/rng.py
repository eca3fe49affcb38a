"""The global random states a training step draws from, captured and restored as one value.

Dropout masks and augmentation draw from the global RNGs (torch CPU and CUDA, numpy, Python's
``random``); the batch order does not (:mod:`dropens.data.loader`). Validation sets these states
aside so it does not shift the training stream, and checkpoints carry them so a resumed run draws
the masks the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The current global RNG states: ``torch``, ``cuda`` (when CUDA is initialised), ``numpy``
    (the legacy global generator, which ``seed_everything`` seeds and libraries may draw from),
    ``python``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # plain Python values (no ndarray): checkpoints load with torch.load(weights_only=True)
        "numpy": _plain_numpy_state(np.random.get_state()),  # noqa: NPY002 (the global one)
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (a ``cuda`` entry only where CUDA is in use)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_numpy_state(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
