"""One re-index run: lock -> templates -> new generation -> load -> validate -> ONE alias swap -> retention.

Any failure before the swap leaves the aliases untouched and deletes this run's own partial
indices, only those no alias points at (read back from the cluster at that moment). An error
around the ``_aliases`` call is settled by reading the aliases back: if the swap was applied, the
run carries on. A crash that could not clean up (SIGKILL) is cleaned by the next run. Rerunning
a generation that is already live does nothing.

Every destructive step is fenced by the lock (``ReindexLock.fence``): a run that lost its lease
stops before it deletes, replaces or swaps anything. A users-only refresh pairs its user index
with the LIVE item index, refuses vectors of another model version, and pins the item alias in
the same ``_aliases`` call.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch
from elasticsearch import ConnectionError as ESConnectionError

from facetrec.catalog import partitions as vector_partitions
from facetrec.catalog.counts import StatsCache, count_rows
from facetrec.catalog.meta import pairing_fields
from facetrec.catalog.rows import RowCatalog
from facetrec.catalog.schema import CatalogSchema
from facetrec.es import client_options, resolve_url
from facetrec.events.apply import UserEvents
from facetrec.items.apply import ItemChanges
from facetrec.items.documents import item_fields
from facetrec.metrics import Metrics, NoMetrics
from facetrec.model.user_encoder import EncoderRegistry
from facetrec.serving import mips
from facetrec.serving.homepage import SearchConfig
from facetrec.settings import Settings
from ingest.indexing import templates
from ingest.indexing.bulk_load import LoadReport, bulk_load, spark_load
from ingest.indexing.generations import VALIDATED, Generations, ModelMismatch, delete_unless_aliased, new_generation_id
from ingest.indexing.lock import LockLost, ReindexLock, reindex_lock
from ingest.indexing.records import facet_value_counts, max_vector_norm
from ingest.indexing.validate import (
    ValidationReport,
    check_count,
    check_load,
    check_recall,
    check_rows,
    sample_user_ids,
)


def _load(es, settings: Settings, index: str, kind: str, source: Any, generation: str, progress: bool,
          total: int | None, doc_fields: dict | None, check, item_vector_scale: float | None,
          partitions: dict | None = None, exact_copy: bool = False, fields: tuple = ()):
    require_unit = kind == "item" and settings.similarity == "dot_product"
    if hasattr(source, "rdd"):  # a Spark DataFrame: each partition streams through the same bulk code
        return spark_load(source, es_url=resolve_url(settings), index=index, kind=kind,
                          generation=generation, dims=settings.vector_dims, require_unit=require_unit,
                          client_options={"request_timeout": 120, **client_options(settings)},
                          doc_fields=doc_fields, check=check, item_vector_scale=item_vector_scale,
                          exact_copy=exact_copy, partitions=partitions, fields=fields)
    return bulk_load(es, index, kind, source, generation=generation, dims=settings.vector_dims,
                     require_unit=require_unit, progress=progress, total=total, streams=settings.bulk_streams,
                     doc_fields=doc_fields, check=check, item_vector_scale=item_vector_scale, exact_copy=exact_copy,
                     partitions=partitions, fields=fields)


def _partitions(settings: Settings, items: Any, schema: CatalogSchema | None) -> tuple[dict, str | None]:
    """The vector partitions of a new item generation (``facetrec.catalog.partitions``), from the counts of
    the partitioned facets' values in ``items`` (read before loading, like the vector scale), and
    the facet whose partitions cover the catalog when the generation is made without a catalog graph
    (``FACETREC_CATALOG_GRAPH=auto``), else None."""
    facets = settings.partition_facets(schema.partition_facets if schema else ())
    if not facets:
        return {}, None
    counts = facet_value_counts(items, facets)
    chosen = vector_partitions.choose(facets, counts, settings.partition_min_docs)
    covering = vector_partitions.covering(chosen, counts) if settings.catalog_graph == "auto" else None
    return chosen, covering


def _item_vector_scale(settings: Settings, items: Any) -> float | None:
    """The scale of a new item generation stored reduced (``facetrec.serving.mips``), or None (raw vectors)."""
    if not mips.applies(settings):
        return None
    scale = max_vector_norm(items, "item_embed")
    if not scale > 0.0:
        raise ValueError("no usable item vector to scale: every item_embed is missing, NaN or zero")
    return scale


def _describe(partitions: dict) -> str:
    def values(by_value: dict) -> str:
        return ", ".join(f"{value} ({entry['docs']:,})" for value, entry in by_value.items()) or "none"
    return "; ".join(f"{facet}: {values(by_value)}" for facet, by_value in partitions.items())


def swap_and_confirm(gens: Generations, targets: dict[str, str], pin: dict[str, str] | None = None) -> None:
    """The one ``_aliases`` call. If it errs (a timeout, a dropped connection), it may still have been
    applied: read the aliases back and carry on when they already name the targets; raise otherwise."""
    try:
        gens.swap(targets, pin=pin)
    except (ConnectionTimeout, ESConnectionError, ApiError) as exc:
        if any(gens.live_index(family) != index for family, index in targets.items()):
            raise
        print(f"facetrec: the _aliases call failed ({type(exc).__name__}) but the aliases show it was applied; "
              "carrying on", file=sys.stderr)


def _step(generation: str, message: str) -> None:
    """One progress line per step on stderr (what an on-call engineer, and the chaos test, follow)."""
    print(f"facetrec: [publish {generation}] {message}", file=sys.stderr, flush=True)


def _pair_items(gens: Generations, model_version: str) -> tuple[str, str]:
    """For a users-only refresh: the live item index and its generation, refusing
    (before anything is created) when those items come from another model than the new user vectors."""
    item_index = gens.live_index("item")
    if item_index is None:
        raise RuntimeError("no live item generation: run a full re-index (items and users) first")
    meta = gens.meta(item_index)
    if meta.get("model_version") != model_version:
        raise ModelMismatch(
            f"users-only refresh refused: the new user vectors come from model {model_version!r} but the live "
            f"items ({item_index}) are model {meta.get('model_version')!r}; a user vector may only be scored "
            "against items of its own model. Refresh with the live model's exported encoder, or run the full "
            "nightly (items and users). The aliases were not touched.")
    return item_index, meta.get("generation") or item_index[len(gens.family_prefix("item")) + 1:]


@dataclasses.dataclass(frozen=True)
class PublishPlan:
    """What one publish makes, decided under the lock before anything is created."""
    generation: str
    model_version: str
    families: tuple[str, ...]          # ("item", "user"), or ("user",) for a users-only refresh
    item_index: str                    # the new item index, or the live one a users-only refresh pairs with
    item_generation: str
    pin: dict[str, str] | None         # a users-only refresh: the item alias must stay where it is
    scale: float | None                # item vectors stored reduced with this scale (facetrec.serving.mips)
    partitions: dict                   # vector partitions (facetrec.catalog.partitions)
    covering: str | None               # the facet whose partitions cover the catalog (no catalog graph)
    exact_copy: bool                   # the item index also holds a flat copy of its vectors
    items_since: datetime | None = None   # the catalog snapshot: item changes after it are replayed onto the pair


def plan_publish(gens: Generations, settings: Settings, items: Any, model_version: str,
                 generation: str, schema: CatalogSchema | None = None, items_since: datetime | None = None) -> PublishPlan:
    families = ("item", "user") if items is not None else ("user",)
    if items is not None:
        item_index, item_generation, pin = gens.index_name("item", generation), generation, None
        scale = _item_vector_scale(settings, items)
        partitions, covering = _partitions(settings, items, schema)
    else:
        (item_index, item_generation), scale, partitions, covering = _pair_items(gens, model_version), None, {}, None
        pin = {"item": item_index}  # the swap fails if the item alias moved meanwhile
    # Without a catalog graph the item vector field is flat: exact already, no flat copy needed.
    return PublishPlan(generation, model_version, families, item_index, item_generation, pin, scale, partitions,
                       covering, exact_copy=settings.exact_vector_copy and covering is None,
                       items_since=items_since if items is not None else None)


class _Publish:
    """The steps of one publish over its plan, each fenced by the lock; ``created`` is what a failure
    removes again (never an index an alias names)."""

    def __init__(self, es: Elasticsearch, settings: Settings, catalog: RowCatalog, gens: Generations,
                 lock: ReindexLock, plan: PublishPlan, metrics: Metrics, progress: bool):
        self.es, self.settings, self.catalog, self.gens, self.lock = es, settings, catalog, gens, lock
        self.plan, self.metrics, self.progress = plan, metrics, progress
        self.created: list[str] = []

    def say(self, message: str) -> None:
        _step(self.plan.generation, message)

    def prepare(self) -> None:
        """Remove what crashed runs left, and PUT the index templates (when they changed)."""
        self.lock.fence("cleanup")
        self.say("cleanup of partial generations")
        removed = self.gens.cleanup_partial()
        if removed:
            print(f"facetrec: removed partial generations left by an earlier run: {', '.join(removed)}")
        templates.apply(self.es, self.settings, self.plan.model_version)

    def load(self, family: str, source: Any, expected: int | None) -> LoadReport:
        """Create the family's new index, load it, check it is whole, and (items) record its row counts."""
        plan, started, is_item = self.plan, time.perf_counter(), family == "item"
        self.lock.fence(f"create {family}")
        self.say(f"create {self.gens.index_name(family, plan.generation)}")
        schema = self.catalog.schema
        index = self.gens.create(
            family, plan.generation, plan.model_version, item_generation=plan.item_generation,
            item_vector_scale=plan.scale if is_item else None, exact_vectors=is_item and plan.exact_copy,
            partitions=plan.partitions if is_item else None, index_type=self.settings.index_type if is_item else None,
            covering=plan.covering, catalog_schema=schema.to_json() if is_item and schema else None,
            catalog_at=(plan.items_since or datetime.now(timezone.utc)).isoformat() if is_item else None,
            properties=self._item_properties() if is_item else None)
        self.created.append(index)
        self.say(f"load {index}" + (self._item_layout() if is_item else ""))
        # Each user document carries what the service needs to ask its item generation.
        pairing = {"item_generation": plan.item_generation, **pairing_fields(self.gens.meta(plan.item_index))} \
            if family == "user" else None
        report = _load(self.es, self.settings, index, family, source, plan.generation, self.progress, expected,
                       pairing, self.lock.check, plan.scale, plan.partitions if is_item else None,
                       is_item and plan.exact_copy, item_fields(self.catalog.schema))
        check_load(report)
        segments = self.settings.item_segments if is_item and self.settings.index_type != "flat" else 0
        if segments:
            self.say(f"merge {index} to {segments} segment{'s' if segments > 1 else ''}")
        merge_started = time.perf_counter()
        self.gens.finish_loading(index, max_segments=segments)
        if segments:
            merged_s = time.perf_counter() - merge_started
            self.metrics.timing("reindex.merge", merged_s * 1000)
            self.say(f"merged {index} in {merged_s:.0f}s")
        check_count(self.es, index, expected if expected is not None else report.attempted)
        if is_item:   # the row planner's counts, recorded with the generation (facetrec.catalog.counts)
            self.gens.update_meta(index, row_stats={"docs": report.indexed, "rows": count_rows(
                self.es, index, list(self.catalog.rows.values()), self.catalog.user_filters, timeout_s=120)})
        self.metrics.gauge("reindex.docs_indexed", report.indexed, tags=[f"family:{family}"])
        self.metrics.timing("reindex.load", (time.perf_counter() - started) * 1000, tags=[f"family:{family}"])
        return report

    def _item_properties(self) -> dict:
        """The new item index's own fields beside the template's: its catalog's (the schema's facets)
        and its vector partitions'."""
        properties = self.catalog.schema.item_properties() if self.catalog.schema else {}
        if self.plan.partitions:
            properties.update(templates.partition_properties(self.settings, self.plan.model_version,
                                                             self.plan.partitions,
                                                             catalog_graph=self.plan.covering is None))
        return properties

    def _item_layout(self) -> str:
        plan = self.plan
        return ((f" (item vectors reduced, scale {plan.scale:.6g})" if plan.scale is not None else "")
                + (f" (vector partitions: {_describe(plan.partitions)})" if plan.partitions else "")
                + (f" (no catalog graph: the {plan.covering} partitions cover it)" if plan.covering else ""))

    def replay_items(self, item_changes: ItemChanges) -> dict | None:
        """The item changes logged since the catalog snapshot, and every takedown in effect, onto the
        new item index (once it is validated, before it goes live)."""
        if "item" not in self.plan.families:
            return None
        self.lock.fence("item changes")
        return item_changes.replay(self.plan.item_index, self.plan.items_since, progress=self.say)

    def validate(self, sample_users: int, recall_sample: tuple | None, min_recall: float) -> ValidationReport:
        """Every configured row serves sampled users from the new pair; a graph's recall is checked."""
        plan, user_index = self.plan, self.gens.index_name("user", self.plan.generation)
        self.say(f"validate {plan.item_index} + {user_index}")
        target = SearchConfig.from_settings(self.settings, item_index=plan.item_index, user_index=user_index,
                                            request_timeout_s=30.0, schema=self.catalog.schema,
                                            stats=StatsCache(list(self.catalog.rows.values()), self.catalog.user_filters))
        validation = ValidationReport()
        check_rows(self.es, target, self.catalog.homepage_rows(), sample_user_ids(self.es, user_index, sample_users))
        validation.checks += ["vectors", "bulk", "count", "rows"]
        if recall_sample is not None and self.settings.graph_index and "item" in plan.families:
            user_vectors, item_ids, item_vectors = recall_sample
            validation.recall = check_recall(self.es, plan.item_index, user_vectors, item_ids, item_vectors, k=10,
                                             num_candidates=100, minimum=min_recall, item_vector_scale=plan.scale)
            validation.checks.append("recall")
        self.metrics.increment("reindex.validation", tags=["result:passed"])
        return validation

    def replay_and_swap(self, user_events: UserEvents, events_since: datetime,
                        item_changes: ItemChanges | None = None, items_read_at: datetime | None = None) -> dict:
        """Re-apply the events logged since the batch input to the new users, mark the pair validated,
        move the aliases in ONE call, then re-apply what was logged meanwhile (events, and the item
        changes the old live pair took during the publish)."""
        plan, user_index = self.plan, self.gens.index_name("user", self.plan.generation)
        self.lock.fence("events")
        replay_started = datetime.now(timezone.utc)
        replayed = user_events.replay(user_index, events_since, progress=self.say)
        self.lock.fence("mark validated")
        for index in self.created:
            self.gens.mark(index, VALIDATED)
        self.lock.fence("swap")
        self.say("swap aliases")
        swap_and_confirm(self.gens, {f: self.gens.index_name(f, plan.generation) for f in plan.families}, pin=plan.pin)
        self.metrics.increment("reindex.swap", tags=[f"families:{'+'.join(plan.families)}"])
        replayed["after_swap"] = _replay_after_swap(user_events, user_index, events_since, replay_started,
                                                    plan.generation, self.metrics)
        if item_changes is not None and "item" in plan.families:
            replayed["items_after_swap"] = _items_after_swap(
                item_changes, plan.item_index, (items_read_at or replay_started) - CLOCK_SKEW, self.say, self.metrics)
        return replayed

    def abandon(self, exc: BaseException) -> None:
        """After a failure before the swap: remove this run's own indices, unless the lock was lost
        (another run may be rebuilding the same names: touch nothing)."""
        self.metrics.increment("reindex.failed", tags=[f"error:{type(exc).__name__}"])
        try:
            self.lock.check("cleanup after a failure")
        except LockLost as lost:
            print(f"facetrec: {lost}; left {', '.join(self.created) or 'nothing'} for the lock's holder",
                  file=sys.stderr)
            return
        delete_unless_aliased(self.es, self.created)

    def retain(self) -> list[str]:
        self.lock.fence("retention")
        self.say("retention")
        return self.gens.retain()


def run_reindex(es: Elasticsearch, settings: Settings, catalog: RowCatalog, *, users: Iterable[Mapping] | Any,
                items: Iterable[Mapping] | Any | None, model_version: str, generation: str | None = None,
                expected_users: int | None = None, expected_items: int | None = None, sample_users: int = 20,
                recall_sample: tuple | None = None, min_recall: float = 0.9,
                progress: bool = True, metrics: Metrics | None = None, events_since: datetime | None = None,
                encoders: EncoderRegistry | None = None, arm: str | None = None,
                items_since: datetime | None = None) -> dict:
    """Publish a new generation. ``items=None`` refreshes users only (items stay as they are).
    ``items`` must be re-readable when a graph generation stores reduced vectors (a list,
    ``parquet_records(path)`` or a Spark DataFrame): its largest norm is read before loading.

    Under the lock: plan, prepare, load each family (a graph item index force-merged to
    ``FACETREC_ITEM_SEGMENTS`` segments: the segment policy of every publish, docs/benchmarks.md),
    validate, replay events and swap, retain (``_Publish``); a failure before the swap removes what
    this run created and moves no alias.

    Event batches logged through the events API with an event newer than ``events_since`` (the
    newest event the batch input saw; default: when this run started) are re-applied to the new
    user index: once before the swap (a failure fails the publish) and once after it for the
    batches that arrived meanwhile (``facetrec.events.apply``).

    Item changes logged through the items API after ``items_since`` (the catalog snapshot the batch
    input was read at; default: when this run started) and every takedown in effect are applied to
    the new item index once it is validated (its recall gate measures the graph against the input's
    own vectors), before the swap, and the changes logged meanwhile again after the swap
    (``facetrec.items.apply``).

    ``arm``: publish the pair behind an experiment arm's aliases instead of the control aliases
    (``facetrec.experiments``; the same lock, validation and swap, the control aliases untouched)."""
    metrics = metrics or NoMetrics()
    gens = Generations(es, settings, arm=arm)
    generation = generation or new_generation_id()
    started = time.perf_counter()
    with reindex_lock(es, settings) as lock:
        families = ("item", "user") if items is not None else ("user",)
        _step(generation, f"locked; publishing {' and '.join(families)} of model {model_version}")
        if all(gens.live_index(f) == gens.index_name(f, generation) for f in families):
            print(f"facetrec: generation {generation} is already live; re-applying what was logged since its input")
            return {"generation": generation, "status": "already_live",
                    **_finish_live(es, settings, gens, lock, generation, families, events_since, encoders)}
        plan = plan_publish(gens, settings, items, model_version, generation, catalog.schema, items_since)
        run = _Publish(es, settings, catalog, gens, lock, plan, metrics, progress)
        run.prepare()
        item_changes = ItemChanges(es, settings)
        try:
            reports = {family: run.load(family, source, expected)
                       for family, source, expected in (("item", items, expected_items), ("user", users, expected_users))
                       if family in plan.families}
            # Validated as loaded (the recall gate compares the graph with the input's own vectors),
            # then the item changes logged since the catalog snapshot, before the swap.
            validation = run.validate(sample_users, recall_sample, min_recall)
            items_read_at = datetime.now(timezone.utc)   # the replay after the swap reads the log again from here
            items_replayed = run.replay_items(item_changes)
            replayed = run.replay_and_swap(UserEvents(es, settings, encoders),
                                           events_since or datetime.now(timezone.utc), item_changes, items_read_at)
        except BaseException as exc:
            run.abandon(exc)
            raise
        deleted = run.retain()
        seconds = time.perf_counter() - started
        metrics.timing("reindex.total", seconds * 1000)
        _step(generation, f"live ({', '.join(plan.families)}) after {seconds:.1f}s; kept "
                          f"{settings.generations_to_keep} pairs, deleted {', '.join(deleted) or 'none'}")
        return {"generation": generation, "status": "swapped", "families": list(plan.families),
                "item_generation": plan.item_generation, "model_version": model_version,
                "loaded": {f: r.indexed for f, r in reports.items()},
                "docs_per_s": {f: round(r.docs_per_s) for f, r in reports.items()}, "validation": validation.checks,
                "recall": validation.recall, "events_replayed": replayed, "items_replayed": items_replayed,
                "deleted": deleted, "seconds": seconds}


def _finish_live(es: Elasticsearch, settings: Settings, gens: Generations, lock, generation: str,
                 families: tuple[str, ...], events_since: datetime | None, encoders: EncoderRegistry | None) -> dict:
    """A rerun of a generation that already went live: the run that swapped it may have died before
    its replays after the swap, so the item changes since its catalog snapshot (and every takedown),
    as a rollback replays them, and, when known, the event batches since its input are applied again
    (both idempotent)."""
    done: dict = {}
    if "item" in families:
        lock.fence("item changes")
        done["items_replayed"] = gens.replay_item_changes(gens.live_index("item"), f"publish {generation}")
    if events_since is not None:
        lock.fence("events")
        done["events_replayed"] = UserEvents(es, settings, encoders).replay(
            gens.live_index("user"), events_since, progress=lambda message: _step(generation, message))
    return done


# Events logged by another machine's clock up to this much before the first replay are read again.
CLOCK_SKEW = timedelta(minutes=5)


def _items_after_swap(item_changes: ItemChanges, item_index: str, since: datetime, say, metrics: Metrics) -> dict | str:
    """The item changes logged while the publish ran (the old live pair took them): the swap is done,
    so a failure is reported (the changes stay in the log; takedowns are honoured at read time)."""
    try:
        return item_changes.replay(item_index, since, progress=say)
    except Exception as exc:  # noqa: BLE001 - reported: the aliases have moved, the log keeps the changes
        metrics.increment("reindex.items_replay_failed")
        message = (f"item changes logged during the publish were not re-applied to {item_index} "
                   f"({type(exc).__name__}: {exc}); they are in the item change log: run `facetrec items replay`")
        print(f"facetrec: {message}", file=sys.stderr)
        return f"failed: {message}"


def _replay_after_swap(user_events: UserEvents, user_index: str, since: datetime, first_replay: datetime,
                       generation: str, metrics: Metrics) -> dict | str:
    """The batches logged while the first replay and the swap ran. The swap is done, so a failure
    here is reported (and the batches stay in the log), not raised."""
    try:
        return user_events.replay(user_index, since, received_after=first_replay - CLOCK_SKEW,
                                  progress=lambda m: _step(generation, m))
    except Exception as exc:  # noqa: BLE001 - reported: the aliases have moved, the log keeps the batches
        metrics.increment("reindex.events_replay_failed")
        message = (f"events logged during the swap were not re-applied to {user_index} ({type(exc).__name__}: "
                   f"{exc}); they are in the event log: run `facetrec events replay --since {since.isoformat()}`")
        print(f"facetrec: {message}", file=sys.stderr)
        return f"failed: {message}"
