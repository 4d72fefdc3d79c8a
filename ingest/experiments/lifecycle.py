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
* ``weight``: the arm takes buckets from control or gives its own back; no other arm's user moves.
* ``stop``: the arm leaves the experiment; once every process has seen that, its aliases are removed
  and its pair is marked retired (``rolled_back``: a rollback never lands on it) and left to retention.

The experiment document changes under the re-index lock, with optimistic concurrency besides.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import datetime, timezone
from typing import Callable

from elasticsearch import ConflictError, Elasticsearch

from facetrec.es import alias_index
from facetrec.events.apply import UserEvents
from facetrec.experiments import (
    CONTROL,
    EXPERIMENT_DOC_ID,
    Experiment,
    ExperimentError,
    arm_aliases,
    check_arm_name,
    check_experiment_id,
    check_weight,
    describe,
    experiment_index,
    read_experiment_versioned,
)
from facetrec.settings import Settings
from ingest.indexing.generations import ROLLED_BACK, Generations
from ingest.indexing.lock import reindex_lock
from ingest.indexing.reindex import CLOCK_SKEW, swap_and_confirm

SEEN_MARGIN_S = 1.0   # beyond the refresh interval and two request timeouts (a page in flight)


def _say(message: str) -> None:
    print(f"facetrec: [experiment] {message}", file=sys.stderr, flush=True)


def _write(es: Elasticsearch, settings: Settings, experiment: Experiment | None, concurrency: dict) -> None:
    """Replace (or, with None or no candidate arm left, delete) the experiment document; a
    concurrent change is an error."""
    index = experiment_index(settings)
    try:
        if experiment is None or not experiment.candidates:
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


def _candidate(experiment: Experiment | None, arm: str) -> Experiment:
    if experiment is None or check_arm_name(arm) == CONTROL or experiment.arm(arm) is None:
        raise ExperimentError(f"{arm!r} is not a candidate arm of a running experiment "
                              f"(arms: {experiment.arm_names if experiment else 'none running'})")
    return experiment


def _wait_seen(settings: Settings, wait: Callable[[float], None]) -> None:
    seconds = settings.experiment_refresh_s + 2 * settings.es_request_timeout_s + SEEN_MARGIN_S
    _say(f"waiting {seconds:g}s until every service process has re-read the experiment")
    wait(seconds)


def _arm_indices(es: Elasticsearch, settings: Settings, arm: str) -> dict[str, str]:
    """{alias: index} of the arm's aliases that exist."""
    found = {alias: alias_index(es, alias) for alias in arm_aliases(settings, arm)}
    return {alias: index for alias, index in found.items() if index}


def _remove_aliases(es: Elasticsearch, recorded: dict[str, str]) -> list[str]:
    """Remove exactly these (alias, index) pairs: an alias that a later command moved elsewhere stays."""
    removed = []
    for alias, index in recorded.items():
        if alias_index(es, alias) == index:
            es.options(ignore_status=404).indices.update_aliases(
                actions=[{"remove": {"index": index, "alias": alias, "must_exist": True}}])
            removed.append(alias)
    return removed


def start(es: Elasticsearch, settings: Settings, *, experiment_id: str, arm: str, weight: float,
          publish: Callable[[str], dict], wait: Callable[[float], None] = time.sleep) -> dict:
    """Publish a candidate pair as ``arm`` of ``experiment_id`` (a new experiment, or one more arm of
    the running one) at ``weight``. ``publish(arm)`` publishes the pair behind the arm's aliases
    (``run_reindex(..., arm=arm)``, or the pipeline's ``step_publish(..., arm=arm)``, which also
    registers its encoder and ranker) and returns its result. Nothing is added to the experiment
    unless that pair went live behind the arm's aliases; if adding it fails, its aliases are removed."""
    check_experiment_id(experiment_id)
    if check_arm_name(arm) == CONTROL:
        raise ExperimentError(f"{CONTROL!r} is the pair behind the item and user aliases: name the candidate arm")

    def planned(running: Experiment | None) -> Experiment:
        if running is not None and running.id != experiment_id:
            raise ExperimentError(f"experiment {running.id!r} is running: promote or stop its arms first")
        if running is not None and running.arm(arm) is not None:
            raise ExperimentError(f"arm {arm!r} is already live in experiment {experiment_id!r}: stop it first")
        return (running or Experiment(experiment_id)).with_weight(arm, check_weight(arm, weight))

    planned(read_experiment_versioned(es, settings)[0])   # the names and weights fit, before anything is published
    if _arm_indices(es, settings, arm):
        raise ExperimentError(f"{', '.join(arm_aliases(settings, arm))} name a pair already; "
                              f"`facetrec experiment stop --arm {arm}` removes them")
    if alias_index(es, settings.item_alias) is None:
        raise ExperimentError("no control pair is live: publish one first (`facetrec pipeline run`)")

    began = datetime.now(timezone.utc)
    published = publish(arm)
    recorded = _arm_indices(es, settings, arm)
    if published.get("status") != "swapped" or len(recorded) != 2:
        raise ExperimentError(f"arm {arm!r}: the publish did not go live behind its aliases ({published.get('status')})")
    try:
        with reindex_lock(es, settings) as lock:
            running, concurrency = read_experiment_versioned(es, settings)
            experiment = planned(running)
            experiment = experiment.with_weight(arm, weight, model_version=published.get("model_version"),
                                                generation=published.get("generation"))
            if running is None:
                experiment = dataclasses.replace(experiment, started_at=began.isoformat())
            lock.fence("experiment start")
            _write(es, settings, experiment, concurrency)
    except BaseException:
        removed = _remove_aliases(es, recorded)   # no process serves an arm the document does not name
        _say(f"arm {arm!r} not added; removed {', '.join(removed) or 'nothing'}")
        raise
    _say(f"arm {arm!r} live in experiment {experiment_id!r} at weight {experiment.weight(arm):g} "
         f"(model {published.get('model_version')}, {', '.join(recorded)})")
    _wait_seen(settings, wait)
    user_index = recorded[arm_aliases(settings, arm)[1]]
    # Every batch received since the publish began, whatever its event times: those the services
    # applied to control alone before they knew the arm (applying a batch twice changes nothing).
    try:
        replayed = UserEvents(es, settings).replay(user_index, datetime(1970, 1, 1, tzinfo=timezone.utc),
                                                   received_after=began - CLOCK_SKEW, progress=_say)
    except Exception as exc:  # noqa: BLE001 - the arm is live; say how to finish the replay
        replayed = (f"failed ({type(exc).__name__}: {exc}); run `facetrec events replay --since "
                    f"{(began - CLOCK_SKEW).isoformat()} --user-index {user_index}`")
        _say(replayed)
    return {"experiment": experiment_id, "arm": arm, "weight": experiment.weight(arm), "publish": published,
            "events_replayed": replayed, **describe(experiment)}


def set_weight(es: Elasticsearch, settings: Settings, arm: str, weight: float) -> dict:
    """Give ``arm`` another weight: it takes free buckets from control or gives its own back."""
    with reindex_lock(es, settings) as lock:
        running, concurrency = read_experiment_versioned(es, settings)
        experiment = _candidate(running, arm).with_weight(arm, weight)
        lock.fence("experiment weight")
        _write(es, settings, experiment, concurrency)
    return describe(experiment)


def promote(es: Elasticsearch, settings: Settings, arm: str, wait: Callable[[float], None] = time.sleep) -> dict:
    """Make ``arm``'s pair the control pair in one ``_aliases`` call; the arm leaves the experiment."""
    _candidate(read_experiment_versioned(es, settings)[0], arm)
    with reindex_lock(es, settings) as lock:
        running, concurrency = read_experiment_versioned(es, settings)
        _candidate(running, arm)   # still a candidate now that the lock is held
        recorded = _arm_indices(es, settings, arm)
        item_alias, user_alias = arm_aliases(settings, arm)
        if len(recorded) != 2:
            raise ExperimentError(f"arm {arm!r} has no pair behind {item_alias} / {user_alias}")
        targets = {"item": recorded[item_alias], "user": recorded[user_alias]}
        before = {"item": alias_index(es, settings.item_alias), "user": alias_index(es, settings.user_alias)}
        lock.fence("promote swap")
        swap_and_confirm(Generations(es, settings), targets)
        _say(f"control is now arm {arm!r}'s pair: {targets['item']} + {targets['user']}")
        lock.fence("experiment promote")
        _write(es, settings, running.without(arm), concurrency)
    _wait_seen(settings, wait)
    removed = _remove_aliases(es, recorded)
    return {"promoted": arm, "control": targets, "previous_control": before, "removed_aliases": removed,
            **describe(read_experiment_versioned(es, settings)[0])}


def stop(es: Elasticsearch, settings: Settings, arm: str | None = None,
         wait: Callable[[float], None] = time.sleep) -> dict:
    """Retire ``arm`` (every candidate arm when None): it leaves the experiment, then its aliases go
    and its pair is marked retired (never a rollback target), left to retention. Also clears the
    aliases of an arm the document does not name (a start that failed half way)."""
    with reindex_lock(es, settings) as lock:
        running, concurrency = read_experiment_versioned(es, settings)
        if arm is None:
            if running is None:
                raise ExperimentError("no experiment is running")
            names = [a.name for a in running.candidates]
        else:
            names = [check_arm_name(arm)]
            if names == [CONTROL] or ((running is None or running.arm(arm) is None)
                                      and not _arm_indices(es, settings, arm)):
                raise ExperimentError(f"{arm!r} is not a candidate arm of a running experiment "
                                      f"(arms: {running.arm_names if running else 'none running'})")
        recorded = {alias: index for name in names for alias, index in _arm_indices(es, settings, name).items()}
        lock.fence("experiment stop")
        if running is not None:
            _write(es, settings, running.without(*names), concurrency)
    _wait_seen(settings, wait)
    removed = _remove_aliases(es, recorded)
    gens = Generations(es, settings)
    still_aliased = gens.aliased_indices()
    for index in recorded.values():
        if index.startswith(f"{settings.user_alias}-") and index not in still_aliased:
            gens.mark(index, ROLLED_BACK)
    return {"stopped": names, "removed_aliases": removed, **describe(read_experiment_versioned(es, settings)[0])}


def status(es: Elasticsearch, settings: Settings) -> dict:
    """The running experiment's arms, with the pair behind each arm's aliases."""
    experiment, _ = read_experiment_versioned(es, settings)
    out = describe(experiment)
    for entry in out["arms"]:
        item_alias, user_alias = arm_aliases(settings, entry["name"])
        entry["item_index"], entry["user_index"] = alias_index(es, item_alias), alias_index(es, user_alias)
    return out
