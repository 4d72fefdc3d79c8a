"""Experiment arms: two or more generation pairs live at once, each user served by one of them.

An experiment (``facetrec experiment start``) names arms with weights. ``control`` is the pair behind
the item and user aliases; every other arm is a pair behind its own aliases, ``<item alias>@<arm>``
and ``<user alias>@<arm>``, so a page of an arm reads the user vector and the items of that arm's
pair and nothing else (a user vector is only ever scored against items of its own model).

A user's arm is a weighted rendezvous hash of (experiment id, user id): each arm draws
``-ln(u) / weight`` from the hash of (experiment, user, arm) and the smallest draw wins. The same user
gets the same arm on every request and every worker, arms get their weights' shares, and changing
one arm's weight moves only users into or out of that arm.

The experiment is one document in the index ``<item alias>_experiment``; the service reads it at
most every ``FACETREC_EXPERIMENT_REFRESH_S`` seconds (``ExperimentCache``), which is why the
lifecycle commands (``ingest.indexing.experiments``) wait that long before removing aliases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import threading
import time
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from facetrec.settings import Settings

log = logging.getLogger("facetrec.experiments")

CONTROL = "control"
EXPERIMENT_DOC_ID = "current"
ARM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ExperimentError(ValueError):
    """An experiment or arm that cannot be (a bad name or weight, an unknown arm); the message says why."""


def experiment_index(settings: Settings) -> str:
    return f"{settings.item_alias}_experiment"


def arm_aliases(settings: Settings, arm: str) -> tuple[str, str]:
    """(item alias, user alias) of an arm: the control aliases themselves for ``control``."""
    if arm == CONTROL:
        return settings.item_alias, settings.user_alias
    return f"{settings.item_alias}@{arm}", f"{settings.user_alias}@{arm}"


def check_arm_name(name: str) -> str:
    if not isinstance(name, str) or not ARM_NAME.fullmatch(name):
        raise ExperimentError(f"arm name {name!r}: expected 1-32 of a-z, 0-9, '_' or '-', starting with a letter "
                              "or digit")
    return name


def check_experiment_id(value: str) -> str:
    if not isinstance(value, str) or not EXPERIMENT_ID.fullmatch(value):
        raise ExperimentError(f"experiment id {value!r}: expected 1-64 of A-Z, a-z, 0-9, '.', '_' or '-'")
    return value


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    model_version: str | None = None
    generation: str | None = None     # the user generation of its pair when it started (informational)

    def __post_init__(self) -> None:
        check_arm_name(self.name)
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise ExperimentError(f"arm {self.name!r}: weight {self.weight!r} must be a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Experiment:
    id: str
    arms: tuple[Arm, ...]          # control first
    started_at: str | None = None

    def __post_init__(self) -> None:
        check_experiment_id(self.id)
        names = [a.name for a in self.arms]
        if not names or names[0] != CONTROL or len(set(names)) != len(names):
            raise ExperimentError(f"experiment {self.id!r}: arms {names} must start with {CONTROL!r} and be distinct")
        if not sum(a.weight for a in self.arms) > 0:
            raise ExperimentError(f"experiment {self.id!r}: at least one arm needs a weight above 0")

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def assign(self, user_id: str) -> str:
        """The user's arm: the same for the same (experiment, user, weights) everywhere."""
        return assign(self.id, user_id, [(a.name, a.weight) for a in self.arms])

    def to_document(self) -> dict:
        return {"experiment_id": self.id, "started_at": self.started_at,
                "arms": [dataclasses.asdict(a) for a in self.arms]}

    @classmethod
    def from_document(cls, src: dict) -> "Experiment":
        return cls(id=src["experiment_id"], started_at=src.get("started_at"),
                   arms=tuple(Arm(**arm) for arm in src["arms"]))


def _unit(experiment_id: str, user_id: str, arm: str) -> float:
    """A uniform draw in (0, 1) from the hash of (experiment, user, arm)."""
    digest = hashlib.blake2b(f"{experiment_id}\0{user_id}\0{arm}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0 ** 64


def assign(experiment_id: str, user_id: str, weights: list[tuple[str, float]]) -> str:
    """Weighted rendezvous hashing: the arm with the smallest ``-ln(u) / weight`` (arms of weight 0
    never win). P(arm) = weight / sum(weights); changing one weight only moves users from or to it."""
    best, best_score = None, math.inf
    for name, weight in weights:
        if weight <= 0:
            continue
        score = -math.log(_unit(experiment_id, user_id, name)) / weight
        if score < best_score:
            best, best_score = name, score
    if best is None:
        raise ExperimentError(f"experiment {experiment_id!r} has no arm with a weight above 0")
    return best


def read_experiment(es: Elasticsearch, settings: Settings, timeout_s: float | None = None) -> Experiment | None:
    """The running experiment, or None (no experiment index, no document)."""
    client = es if timeout_s is None else es.options(request_timeout=timeout_s)
    try:
        doc = client.get(index=experiment_index(settings), id=EXPERIMENT_DOC_ID)
    except NotFoundError:
        return None
    return Experiment.from_document(doc["_source"])


class ExperimentCache:
    """The service's view of the running experiment, re-read at most every ``refresh_s`` seconds
    (one GET by id). A failed read keeps the last view (logged); before any read succeeds there is
    no experiment to serve and every user is ``control``."""

    def __init__(self, es: Elasticsearch, settings: Settings, refresh_s: float, timeout_s: float = 1.0,
                 clock=time.monotonic):
        self.es, self.settings, self.refresh_s, self.timeout_s, self.clock = es, settings, refresh_s, timeout_s, clock
        self._value: Experiment | None = None
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def get(self) -> Experiment | None:
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.refresh_s:
            return self._value
        with self._lock:
            if self._read_at is not None and self.clock() - self._read_at < self.refresh_s:
                return self._value
            try:
                self._value = read_experiment(self.es, self.settings, self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - keep serving the last view; the pages say their arm
                log.warning("experiment unreadable; keeping the last view",
                            extra={"event": "experiment_unreadable", "detail": f"{type(exc).__name__}: {exc}"[:300]})
            self._read_at = self.clock()
            return self._value

    def arm_user_aliases(self) -> dict[str, str]:
        """{arm: user alias} of the running experiment's arms besides control: where fresh events go too."""
        experiment = self.get()
        if experiment is None:
            return {}
        return {a.name: arm_aliases(self.settings, a.name)[1] for a in experiment.arms if a.name != CONTROL}


def describe(experiment: Experiment | None) -> dict[str, Any]:
    """What ``facetrec experiment status`` prints and the service reports."""
    if experiment is None:
        return {"experiment": None, "arms": [{"name": CONTROL, "weight": 1.0}]}
    return {"experiment": experiment.id, "started_at": experiment.started_at,
            "arms": [dataclasses.asdict(a) for a in experiment.arms]}
