"""Fixtures of the model tests (this directory only)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The models under test are tiny: one intra-op thread is faster than two, and does not
    slow down 3x when the machine is busy (thread oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
