"""The lifecycle of an experiment's arms (``facetrec experiment start|status|promote|stop``).

* ``start``: publish a candidate pair behind the arm's aliases (``run_reindex(arm=...)``: the same
  lock, validation, green wait and swap as the nightly job; the control aliases untouched), then add
  the arm with its weight to the experiment document (control keeps the rest of the weight). Once
  every service process has seen the arm (``FACETREC_EXPERIMENT_REFRESH_S``), the event batches
  logged since the publish began are applied to the arm's user index again (idempotent), so a batch
  that reached control before the services knew the arm is in the arm's pair too.
* ``promote``: ONE ``_aliases`` call points the control aliases at the arm's pair (the arm's own
  aliases stay on it, so a page of either name reads the same pair); then the arm leaves the
  experiment, and once every process has seen that, its aliases are removed.
* ``stop``: the arm leaves the experiment; once every process has seen that, its aliases are removed
  and its pair is left to the normal retention.

The experiment document changes under the re-index lock, with optimistic concurrency besides.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Callable

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from facetrec.es import alias_index
from facetrec.experiments import (CONTROL, EXPERIMENT_DOC_ID, Arm, Experiment, ExperimentError, arm_aliases,
                                  check_arm_name, check_experiment_id, describe, experiment_index)
from facetrec.settings import Settings
from facetrec.user_events import UserEvents
from ingest.indexing.generations import Generations
from ingest.indexing.lock import ReindexLock
from ingest.indexing.reindex import CLOCK_SKEW, swap_and_confirm

SEEN_MARGIN_S = 1.0   # beyond the services' refresh interval, before relying on every process having re-read


def _say(message: str) -> None:
    print(f"facetrec: [experiment] {message}", file=sys.stderr, flush=True)


def _lock(es: Elasticsearch, settings: Settings) -> ReindexLock:
    return ReindexLock(es, name=f"reindex-{settings.item_alias}", lease_s=settings.lock_lease_s)


def _read(es: Elasticsearch, settings: Settings) -> tuple[Experiment | None, dict]:
    """The experiment and the concurrency fields of its document (empty when there is none)."""
    try:
        doc = es.get(index=experiment_index(settings), id=EXPERIMENT_DOC_ID)
    except NotFoundError:
        return None, {}
    return Experiment.from_document(doc["_source"]), {"if_seq_no": doc["_seq_no"],
                                                      "if_primary_term": doc["_primary_term"]}


def _write(es: Elasticsearch, settings: Settings, experiment: Experiment | None, concurrency: dict) -> None:
    """Replace (or, with None, delete) the experiment document; a concurrent change is an error."""
    index = experiment_index(settings)
    try:
        if experiment is None:
            if concurrency:
                es.delete(index=index, id=EXPERIMENT_DOC_ID, refresh="wait_for", **concurrency)
            return
        if not es.indices.exists(index=index):
            es.options(ignore_status=400).indices.create(
                index=index, settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"},
                mappings={"dynamic": False, "properties": {"experiment_id": {"type": "keyword"}}})
        es.index(index=index, id=EXPERIMENT_DOC_ID, document=experiment.to_document(), refresh="wait_for",
                 **(concurrency or {"op_type": "create"}))
    except ConflictError as exc:
        raise ExperimentError("the experiment changed while this command ran: check `facetrec experiment status` "
                              "and run it again") from exc


def _with_weights(experiment_id: str, started_at: str, arms: list[Arm]) -> Experiment:
    """Control first, with the weight the other arms leave."""
    others = [a for a in arms if a.name != CONTROL]
    total = sum(a.weight for a in others)
    if total > 1.0 + 1e-9:
        raise ExperimentError(f"the arms' weights add up to {total:g}: at most 1 (control gets the rest)")
    return Experiment(experiment_id, (Arm(CONTROL, max(0.0, 1.0 - total)), *others), started_at)


def _wait_seen(settings: Settings, wait: Callable[[float], None]) -> None:
    seconds = settings.experiment_refresh_s + SEEN_MARGIN_S
    _say(f"waiting {seconds:g}s until every service process has re-read the experiment")
    wait(seconds)


def _remove_arm_aliases(es: Elasticsearch, settings: Settings, arm: str) -> list[str]:
    actions = []
    for alias in arm_aliases(settings, arm):
        index = alias_index(es, alias)
        if index:
            actions.append({"remove": {"index": index, "alias": alias}})
    if actions:
        es.indices.update_aliases(actions=actions)
    return [a["remove"]["alias"] for a in actions]


def start(es: Elasticsearch, settings: Settings, *, experiment_id: str, arm: str, weight: float,
          publish: Callable[[str], dict], wait: Callable[[float], None] = time.sleep) -> dict:
    """Publish a candidate pair as ``arm`` of ``experiment_id`` (a new experiment, or one more arm of
    the running one) at ``weight``. ``publish(arm)`` publishes the pair behind the arm's aliases
    (``run_reindex(..., arm=arm)``, or the pipeline's ``step_publish(..., arm=arm)``, which also
    registers its encoder and ranker) and returns its result. Nothing is added to the experiment
    unless that pair went live behind the arm's aliases."""
    check_experiment_id(experiment_id)
    if check_arm_name(arm) == CONTROL:
        raise ExperimentError(f"{CONTROL!r} is the pair behind the item and user aliases: name the candidate arm")
    Arm(arm, weight)   # the weight's checks, before anything is published
    running, _ = _read(es, settings)
    if running is not None and running.id != experiment_id:
        raise ExperimentError(f"experiment {running.id!r} is running: promote or stop its arms first")
    if running is not None and running.arm(arm) is not None:
        raise ExperimentError(f"arm {arm!r} is already live in experiment {experiment_id!r}: stop it first")
    _with_weights(experiment_id, "", [*(running.arms if running else ()), Arm(arm, weight)])   # weights fit
    if alias_index(es, settings.item_alias) is None:
        raise ExperimentError("no control pair is live: publish one first (`facetrec pipeline run`)")

    began = datetime.now(timezone.utc)
    published = publish(arm)
    model_version = published.get("model_version")
    if published.get("status") != "swapped" or alias_index(es, arm_aliases(settings, arm)[1]) is None:
        raise ExperimentError(f"arm {arm!r}: the publish did not go live behind its aliases ({published.get('status')})")
    with _lock(es, settings) as lock:
        running, concurrency = _read(es, settings)
        if running is not None and running.id != experiment_id:
            raise ExperimentError(f"experiment {running.id!r} started meanwhile; arm {arm!r} is published behind "
                                  f"{', '.join(arm_aliases(settings, arm))} but serves nobody")
        lock.fence("experiment start")
        experiment = _with_weights(experiment_id, running.started_at if running else began.isoformat(),
                                   [*(running.arms if running else ()),
                                    Arm(arm, weight, model_version, published.get("generation"))])
        _write(es, settings, experiment, concurrency)
    _say(f"arm {arm!r} live in experiment {experiment_id!r} at weight {weight:g} "
         f"(model {model_version}, {', '.join(arm_aliases(settings, arm))})")
    _wait_seen(settings, wait)
    user_index = alias_index(es, arm_aliases(settings, arm)[1])
    # Every batch received since the publish began, whatever its event times: those the services
    # applied to control alone before they knew the arm (applying a batch twice changes nothing).
    replayed = UserEvents(es, settings).replay(user_index, datetime(1970, 1, 1, tzinfo=timezone.utc),
                                               received_after=began - CLOCK_SKEW, progress=_say)
    return {"experiment": experiment_id, "arm": arm, "weight": weight, "publish": published,
            "events_replayed": replayed, **describe(experiment)}


def promote(es: Elasticsearch, settings: Settings, arm: str, wait: Callable[[float], None] = time.sleep) -> dict:
    """Make ``arm``'s pair the control pair in one ``_aliases`` call; the arm leaves the experiment."""
    running, _ = _read(es, settings)
    if running is None or running.arm(check_arm_name(arm)) is None or arm == CONTROL:
        raise ExperimentError(f"{arm!r} is not a candidate arm of a running experiment "
                              f"(running: {running.arm_names if running else 'none'})")
    item_alias, user_alias = arm_aliases(settings, arm)
    with _lock(es, settings) as lock:
        targets = {"item": alias_index(es, item_alias), "user": alias_index(es, user_alias)}
        if None in targets.values():
            raise ExperimentError(f"arm {arm!r} has no pair behind {item_alias} / {user_alias}")
        before = {"item": alias_index(es, settings.item_alias), "user": alias_index(es, settings.user_alias)}
        lock.fence("promote swap")
        swap_and_confirm(Generations(es, settings), targets)
        _say(f"control is now arm {arm!r}'s pair: {targets['item']} + {targets['user']}")
        running, concurrency = _read(es, settings)
        left = [a for a in running.arms if a.name not in (CONTROL, arm)] if running else []
        lock.fence("experiment promote")
        _write(es, settings, _with_weights(running.id, running.started_at, left) if left else None, concurrency)
    _wait_seen(settings, wait)
    removed = _remove_arm_aliases(es, settings, arm)
    return {"promoted": arm, "control": targets, "previous_control": before, "removed_aliases": removed,
            **describe(_read(es, settings)[0])}


def stop(es: Elasticsearch, settings: Settings, arm: str | None = None,
         wait: Callable[[float], None] = time.sleep) -> dict:
    """Retire ``arm`` (every candidate arm when None): it leaves the experiment, then its aliases go;
    its pair is left to the normal retention."""
    running, _ = _read(es, settings)
    if running is None:
        raise ExperimentError("no experiment is running")
    names = [a.name for a in running.arms if a.name != CONTROL] if arm is None else [check_arm_name(arm)]
    unknown = [n for n in names if n == CONTROL or running.arm(n) is None]
    if unknown:
        raise ExperimentError(f"{unknown[0]!r} is not a candidate arm of experiment {running.id!r} "
                              f"(arms: {running.arm_names})")
    with _lock(es, settings) as lock:
        running, concurrency = _read(es, settings)
        left = [a for a in running.arms if a.name not in (CONTROL, *names)]
        lock.fence("experiment stop")
        _write(es, settings, _with_weights(running.id, running.started_at, left) if left else None, concurrency)
    _wait_seen(settings, wait)
    removed = [alias for name in names for alias in _remove_arm_aliases(es, settings, name)]
    return {"stopped": names, "removed_aliases": removed, **describe(_read(es, settings)[0])}


def status(es: Elasticsearch, settings: Settings) -> dict:
    """The running experiment's arms, with the pair behind each arm's aliases."""
    experiment, _ = _read(es, settings)
    out = describe(experiment)
    for entry in out["arms"]:
        item_alias, user_alias = arm_aliases(settings, entry["name"])
        entry["item_index"], entry["user_index"] = alias_index(es, item_alias), alias_index(es, user_alias)
    return out
