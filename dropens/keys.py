"""Metric keys ``stage/set/label/metric`` (STYLE.md 3), e.g. ``test/clean/mc16/ece``: built and
parsed here and nowhere else.

- ``stage``: ``train`` | ``val`` (logged at every validation epoch) | ``test`` (the run record);
- ``set``: an eval set of the data module (``clean`` = the test set, ``val``, ``rotate_3``, ``ood``,
  ``teeth`` for the counterfactual pair metrics...);
- ``label``: what was evaluated — a strategy's label (:mod:`dropens.strategies`): ``deterministic``,
  ``mc<T>`` (:func:`mc_label`), ``members``, ``member<k>`` (:func:`member_label`), ``members@<m>``
  (:func:`prefix_label`), ... and ``<label>_ts`` for its temperature-scaled version
  (:func:`ts_label`);
- ``metric``: ``acc``, ``nll``, ``ece``, ``mi``, ``auroc_entropy``...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STAGES = ("train", "val", "test")
TS_SUFFIX = "_ts"


@dataclass(frozen=True)
class Key:
    """A parsed metric key."""

    stage: str
    set: str
    label: str
    metric: str

    def __str__(self) -> str:
        return key(self.stage, self.set, self.label, self.metric)


def key(stage: str, set_name: str, label: str, metric: str) -> str:
    """``stage/set/label/metric``."""
    return f"{stage}/{set_name}/{label}/{metric}"


def prefix(stage: str, set_name: str, label: str) -> str:
    """``stage/set/label`` (the metrics of one evaluation lie under it)."""
    return f"{stage}/{set_name}/{label}"


def test(set_name: str, label: str, metric: str) -> str:
    """``test/set/label/metric``: a key of the run record (``metrics.json``)."""
    return key("test", set_name, label, metric)


def parse(text: str) -> Key | None:
    """The four parts of a metric key; ``None`` for other logged names (``train/loss_step``)."""
    parts = text.split("/")
    if len(parts) != 4 or parts[0] not in STAGES:
        return None
    return Key(*parts)


def mc_label(samples: int) -> str:
    """``mc<T>``: MC dropout averaged over ``T`` fresh masks."""
    return f"mc{int(samples)}"


def mc_samples(label: str) -> int | None:
    """``T`` of an ``mc<T>`` label (``mc<T>_ts`` too); ``None`` for any other label."""
    match = re.fullmatch(r"mc(\d+)(?:" + TS_SUFFIX + ")?", label)
    return int(match.group(1)) if match else None


def member_label(k: int) -> str:
    """``member<k>``: member ``k`` of an explicit ensemble alone."""
    return f"member{int(k)}"


def prefix_label(m: int) -> str:
    """``members@<m>``: the average of an explicit ensemble's first ``m`` members."""
    return f"members@{int(m)}"


def ts_label(label: str) -> str:
    """``<label>_ts``: ``label``'s prediction after temperature scaling."""
    return f"{label}{TS_SUFFIX}"


def is_ts(label: str) -> bool:
    return label.endswith(TS_SUFFIX)


def mc_sizes_of(
    keys: list[str] | set[str], stage: str = "test", set_name: str = "clean"
) -> list[int]:
    """The sorted ``T`` of every ``mc<T>`` label among ``keys`` for one stage and set."""
    found = set()
    for text in keys:
        k = parse(text)
        if k is not None and k.stage == stage and k.set == set_name and not is_ts(k.label):
            t = mc_samples(k.label)
            if t is not None:
                found.add(t)
    return sorted(found)
