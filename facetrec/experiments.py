"""Experiment arms: two or more generation pairs live at once, each user served by one of them.

An experiment (``facetrec experiment start``) names arms with weights. ``control`` is the pair behind
the item and user aliases; every other arm is a pair behind its own aliases, ``<item alias>@<arm>``
and ``<user alias>@<arm>``, so a page of an arm reads the user vector and the items of that arm's
pair and nothing else (a user vector is only ever scored against items of its own model).

A user's arm is the owner of the bucket (of ``BUCKETS``) that a hash of (experiment id, user id)
falls in. Each candidate arm owns its weight's share of the buckets, control owns the rest: the same
user gets the same arm on every request and every worker, arms get their weights' shares, and
starting, re-weighting or stopping one arm moves users only between that arm and control.

The experiment is one document in the index ``<item alias>_experiment``; the service reads it at
most every ``FACETREC_EXPERIMENT_REFRESH_S`` seconds (``ExperimentCache``), which is why the
lifecycle commands (``ingest.experiments.lifecycle``) wait that long before removing aliases.
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

from facetrec.errors import ConfigurationError, Unavailable
from facetrec.settings import Settings

log = logging.getLogger("facetrec.experiments")

CONTROL = "control"
EXPERIMENT_DOC_ID = "current"
ARM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ExperimentError(ConfigurationError):
    """An experiment or arm that cannot be (a bad name or weight, an unknown arm); the message says why."""


class ExperimentUnknown(Unavailable):
    """The service could not read the experiment lately, so it cannot say which arms a write must reach."""


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


BUCKETS = 1000   # a user hashes to one bucket; weights are multiples of 1/BUCKETS


def bucket(experiment_id: str, user_id: str) -> int:
    digest = hashlib.blake2b(f"{experiment_id}\0{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _bucket_order(experiment_id: str, arm: str) -> list[int]:
    """The order in which ``arm`` takes free buckets (and gives its own back, last taken first)."""
    return sorted(range(BUCKETS), key=lambda b: hashlib.blake2b(f"{experiment_id}\0{arm}\0{b}".encode(),
                                                                digest_size=8).digest())


def check_weight(name: str, weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0.0 <= weight <= 1.0:
        raise ExperimentError(f"arm {name!r}: weight {weight!r} must be a number in [0, 1]")
    return float(weight)


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    buckets: tuple[int, ...] = ()     # a candidate arm's hash buckets (control owns every other bucket)
    model_version: str | None = None
    generation: str | None = None     # the user generation of its pair when it started (informational)

    def __post_init__(self) -> None:
        check_arm_name(self.name)
        if any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < BUCKETS for b in self.buckets) \
                or len(set(self.buckets)) != len(self.buckets):
            raise ExperimentError(f"arm {self.name!r}: buckets must be distinct integers in 0..{BUCKETS - 1}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Arms own disjoint sets of the BUCKETS hash buckets; control owns the rest. A user's arm is the
    owner of the bucket (experiment id, user id) hashes to, so it is the same on every request and
    process, and changing one arm's weight moves buckets (users) only between that arm and control."""
    id: str
    arms: tuple[Arm, ...] = (Arm(CONTROL),)   # control first
    started_at: str | None = None

    def __post_init__(self) -> None:
        check_experiment_id(self.id)
        names = [a.name for a in self.arms]
        if not names or names[0] != CONTROL or len(set(names)) != len(names):
            raise ExperimentError(f"experiment {self.id!r}: arms {names} must start with {CONTROL!r} and be distinct")
        if self.arms[0].buckets:
            raise ExperimentError(f"experiment {self.id!r}: {CONTROL!r} owns the buckets no other arm owns")
        owned = [b for a in self.arms for b in a.buckets]
        if len(set(owned)) != len(owned):
            raise ExperimentError(f"experiment {self.id!r}: two arms own the same bucket")
        self.__dict__["_owner"] = {b: a.name for a in self.arms for b in a.buckets}

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def weight(self, name: str) -> float:
        if name == CONTROL:
            return 1.0 - sum(len(a.buckets) for a in self.arms) / BUCKETS
        arm = self.arm(name)
        return len(arm.buckets) / BUCKETS if arm else 0.0

    def assign(self, user_id: str) -> str:
        """The user's arm: the same for the same (experiment, user, buckets) everywhere."""
        return self.__dict__["_owner"].get(bucket(self.id, user_id), CONTROL)

    def with_weight(self, name: str, weight: float, **fields) -> "Experiment":
        """This experiment with arm ``name`` (added if new) at ``weight``: it takes free buckets from
        control or gives its own back, and no other arm's bucket moves."""
        check_arm_name(name)
        if name == CONTROL:
            raise ExperimentError(f"{CONTROL!r} has the weight the other arms leave; set theirs")
        wanted = round(check_weight(name, weight) * BUCKETS)
        current = self.arm(name) or Arm(name)
        order = _bucket_order(self.id, name)
        mine = set(current.buckets)
        if wanted > len(mine):
            taken = {b for a in self.arms if a.name != name for b in a.buckets}
            free = [b for b in order if b not in taken and b not in mine]
            if len(mine) + len(free) < wanted:
                raise ExperimentError(f"arm {name!r}: weight {weight:g} does not fit; the other arms leave "
                                      f"{(len(mine) + len(free)) / BUCKETS:g}")
            mine |= set(free[:wanted - len(mine)])
        elif wanted < len(mine):
            keep = [b for b in order if b in mine][:wanted]
            mine = set(keep)
        arm = dataclasses.replace(current, buckets=tuple(sorted(mine)), **fields)
        arms = [arm if a.name == name else a for a in self.arms]
        return dataclasses.replace(self, arms=tuple(arms if self.arm(name) else [*arms, arm]))

    def without(self, *names: str) -> "Experiment":
        """This experiment without those arms: their buckets (users) go back to control."""
        return dataclasses.replace(self, arms=tuple(a for a in self.arms if a.name == CONTROL or a.name not in names))

    @property
    def candidates(self) -> list[Arm]:
        return [a for a in self.arms if a.name != CONTROL]

    def to_document(self) -> dict:
        return {"experiment_id": self.id, "started_at": self.started_at,
                "arms": [dataclasses.asdict(a) for a in self.arms]}

    @classmethod
    def from_document(cls, src: dict) -> "Experiment":
        return cls(id=src["experiment_id"], started_at=src.get("started_at"),
                   arms=tuple(Arm(**{**arm, "buckets": tuple(arm.get("buckets") or ())}) for arm in src["arms"]))


def read_experiment_versioned(es: Elasticsearch, settings: Settings,
                              timeout_s: float | None = None) -> tuple[Experiment | None, dict]:
    """The running experiment (None: no experiment index, no document) and the concurrency fields of
    its document (``if_seq_no`` / ``if_primary_term``; empty when there is none) for a write after it."""
    client = es if timeout_s is None else es.options(request_timeout=timeout_s)
    try:
        doc = client.get(index=experiment_index(settings), id=EXPERIMENT_DOC_ID)
    except NotFoundError:
        return None, {}
    return Experiment.from_document(doc["_source"]), {"if_seq_no": doc["_seq_no"],
                                                      "if_primary_term": doc["_primary_term"]}


def read_experiment(es: Elasticsearch, settings: Settings, timeout_s: float | None = None) -> Experiment | None:
    """The running experiment, or None (no experiment index, no document)."""
    return read_experiment_versioned(es, settings, timeout_s)[0]


class ExperimentCache:
    """The service's view of the running experiment, re-read at most every ``refresh_s`` seconds
    (one GET by id). A failed read keeps the last view for pages (logged), but writes that must reach
    every arm (``arm_user_aliases``) refuse until a read succeeds again: an event batch must not go to
    control alone because an arm was not seen."""

    def __init__(self, es: Elasticsearch, settings: Settings, refresh_s: float, timeout_s: float = 1.0,
                 clock=time.monotonic):
        self.es, self.settings, self.refresh_s, self.timeout_s, self.clock = es, settings, refresh_s, timeout_s, clock
        self._value: Experiment | None = None
        self._read_at: float | None = None   # when the last read was sent (its answer is at least that fresh)
        self._known = False                   # the last read succeeded
        self._lock = threading.Lock()

    def get(self) -> Experiment | None:
        if self._read_at is not None and self.clock() - self._read_at < self.refresh_s:
            return self._value
        with self._lock:
            if self._read_at is not None and self.clock() - self._read_at < self.refresh_s:
                return self._value
            sent = self.clock()
            try:
                self._value, self._known = read_experiment(self.es, self.settings, self.timeout_s), True
            except Exception as exc:  # noqa: BLE001 - keep serving the last view; the pages say their arm
                self._known = False
                log.warning("experiment unreadable; keeping the last view",
                            extra={"event": "experiment_unreadable", "detail": f"{type(exc).__name__}: {exc}"[:300]})
            self._read_at = sent
            return self._value

    def arm_user_aliases(self) -> dict[str, str]:
        """{arm: user alias} of the running experiment's arms besides control: where fresh events go
        too. Raises ExperimentUnknown when the last read failed."""
        return {arm: aliases[1] for arm, aliases in self._arm_aliases().items()}

    def arm_item_aliases(self) -> dict[str, str]:
        """{arm: item alias} of the running experiment's arms besides control: where item changes go too."""
        return {arm: aliases[0] for arm, aliases in self._arm_aliases().items()}

    def _arm_aliases(self) -> dict[str, tuple[str, str]]:
        experiment = self.get()
        if not self._known:
            raise ExperimentUnknown("the running experiment could not be read: which arms a write must reach is unknown")
        if experiment is None:
            return {}
        return {a.name: arm_aliases(self.settings, a.name) for a in experiment.candidates}


def describe(experiment: Experiment | None) -> dict[str, Any]:
    """What ``facetrec experiment status`` prints."""
    if experiment is None:
        return {"experiment": None, "arms": [{"name": CONTROL, "weight": 1.0}]}
    return {"experiment": experiment.id, "started_at": experiment.started_at,
            "arms": [{"name": a.name, "weight": experiment.weight(a.name), "model_version": a.model_version,
                      "generation": a.generation} for a in experiment.arms]}
