"""The one ensemble layout (STYLE.md 4): ``M`` members of a batch stacked on the batch axis as
``(m b)`` — member-major, rows ``m*B .. (m+1)*B - 1`` are member ``m`` — and member outputs as
``[M, B, ...]`` (predictions ``[M, N, C]``)."""

from __future__ import annotations

from torch import Tensor


def stack(x: Tensor, m: int) -> Tensor:
    """``(B, ...) -> (m*B, ...)``: ``x`` once per member, member-major (a copy; ``x`` if ``m == 1``)."""
    return x.repeat(int(m), *([1] * (x.dim() - 1))) if m != 1 else x


def unstack(y: Tensor, m: int) -> Tensor:
    """``(m*B, ...) -> [m, B, ...]``: the rows of each member (a view)."""
    return y.reshape(int(m), y.shape[0] // int(m), *y.shape[1:])
