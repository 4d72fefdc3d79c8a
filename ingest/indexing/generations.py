"""Index generations: dated ``item_index-*`` / ``user_index-*`` indices behind two aliases.

A generation is loaded with refresh off and no replicas, restored before it is validated, and
marked in its mapping ``_meta`` (``state``: loading -> validated -> rolled_back). The aliases move
in ONE ``_aliases`` call, so readers see the old pair or the new pair, never a mix.

A **pair** is what serving reads: one user index and the item index its vectors were made for,
both of ONE ``model_version``. Each user index records its item generation in ``_meta``
(``item_generation``) and in every user document, so a pair is named by its user index: the
nightly run makes a new item index and a new user index; the daily users-only refresh makes a new
user index for the live item index. Retention and rollback work on whole pairs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import datetime, timezone

from elasticsearch import Elasticsearch

from facetrec.errors import Refused
from facetrec.es import alias_index
from facetrec.experiments import arm_aliases
from facetrec.serving.hit_fields import DOC_VALUES_META
from facetrec.settings import Settings

FAMILIES = ("item", "user")
# While a generation loads: no flush every minute (each one cuts a segment that merges later rebuild
# graphs from; a generation is rebuilt from its input, not from a translog, if the load fails),
# flushed when the loading is done. Reset to the cluster's defaults by finish_loading.
LOADING_SETTINGS = {"translog.flush_threshold_age": "1h", "translog.flush_threshold_size": "4gb"}
LOADING, VALIDATED, ROLLED_BACK = "loading", "validated", "rolled_back"


def new_generation_id(now: datetime | None = None) -> str:
    """A generation id from the UTC clock, to the microsecond: two publishes in the same second get
    different generations (a second-resolution id made the later one a silent "already live" no-op).
    Ids sort lexically in time order, also beside the DAG's second-resolution ``YYYYMMDD-HHMMSS``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S-%f")


@dataclasses.dataclass(frozen=True)
class GenerationInfo:
    family: str
    index: str
    generation: str
    docs: int
    live: bool
    state: str
    model_version: str | None
    item_generation: str | None = None  # user indices: the item generation their vectors were made for


@dataclasses.dataclass(frozen=True)
class Pair:
    """One user generation with the item generation it was made for."""
    generation: str                # the user generation (names the pair)
    user_index: str
    item_index: str
    model_version: str | None      # the user index's
    item_model_version: str | None
    state: str                     # the user index's state; "broken" when the item side is unusable
    user_docs: int
    item_docs: int
    live: bool
    aliased: bool = False          # some alias names its user index (control's or an experiment arm's)

    @property
    def usable(self) -> bool:
        return self.state == VALIDATED


class AlreadyLive(Refused):
    pass


class NotGreen(Refused):
    """A new generation's shards (its replicas included) were not all assigned in time: it is not
    swapped live (a node down, or more replicas than the cluster has nodes to hold them)."""


class NoPairToRollBackTo(Refused):
    pass


class ModelMismatch(Refused):
    """User vectors of one model version offered for items of another."""


class Generations:
    """The generations of the item and user families, seen through the aliases of one arm: the
    control aliases (``arm=None``) or an experiment arm's (``facetrec.experiments``). Every arm's
    generations share the family's index names (``<item alias>-<generation>``); only the aliases
    that are live, swapped and rolled back differ."""

    def __init__(self, es: Elasticsearch, settings: Settings, arm: str | None = None):
        self.es, self.settings, self.arm = es, settings, arm

    def family_prefix(self, family: str) -> str:
        return {"item": self.settings.item_alias, "user": self.settings.user_alias}[family]

    def alias(self, family: str) -> str:
        if self.arm is None:
            return self.family_prefix(family)
        item, user = arm_aliases(self.settings, self.arm)
        return {"item": item, "user": user}[family]

    def index_name(self, family: str, generation: str) -> str:
        return f"{self.family_prefix(family)}-{generation}"

    # ---- inspection ---------------------------------------------------------------------------
    def live_index(self, family: str) -> str | None:
        return alias_index(self.es, self.alias(family))

    def list(self, family: str) -> list[GenerationInfo]:
        pattern = f"{self.family_prefix(family)}-*"
        mappings = self.es.options(ignore_status=404).indices.get_mapping(index=pattern, allow_no_indices=True)
        if not mappings or "error" in mappings:
            return []
        counts = {row["index"]: int(row["docs.count"] or 0)
                  for row in self.es.cat.indices(index=pattern, format="json", h="index,docs.count")}
        live = self.live_index(family)
        prefix = f"{self.family_prefix(family)}-"
        out = []
        for index, body in mappings.items():
            meta = body.get("mappings", {}).get("_meta", {})
            out.append(GenerationInfo(family, index, index[len(prefix):], counts.get(index, 0), index == live,
                                      meta.get("state", "unknown"), meta.get("model_version"),
                                      meta.get("item_generation")))
        return sorted(out, key=lambda g: g.generation)

    def pairs(self) -> list[Pair]:
        """Every user generation as a pair with its item generation, oldest first."""
        return self._pair_up(self.list("item"), self.list("user"))

    def _pair_up(self, items: list[GenerationInfo], users: list[GenerationInfo]) -> list[Pair]:
        """A user index without ``item_generation`` (made before pairs were recorded) pairs with the
        item generation of the same id."""
        by_generation = {g.generation: g for g in items}
        out = []
        for user in users:
            item_generation = user.item_generation or user.generation
            item = by_generation.get(item_generation)
            state = user.state
            if state == VALIDATED and (item is None or item.state != VALIDATED
                                       or item.model_version != user.model_version):
                state = "broken"
            out.append(Pair(generation=user.generation, user_index=user.index,
                            item_index=item.index if item else self.index_name("item", item_generation),
                            model_version=user.model_version, item_model_version=item.model_version if item else None,
                            state=state, user_docs=user.docs, item_docs=item.docs if item else 0,
                            live=user.live and bool(item and item.live)))
        return out

    def _marked_aliased(self, pairs: list[Pair]) -> list[Pair]:
        aliased = self.aliased_indices()
        # By its user index: the pairs of a users-only refresh share their item index with the live one.
        return [dataclasses.replace(p, aliased=p.user_index in aliased) for p in pairs]

    def live_pair(self) -> Pair | None:
        return next((p for p in self.pairs() if p.live), None)

    def status(self) -> dict:
        """The pairs (what serving reads and rollback moves between) and every index of each family."""
        listed = {family: self.list(family) for family in FAMILIES}
        pairs = self._marked_aliased(self._pair_up(listed["item"], listed["user"]))
        return {"pairs": [dataclasses.asdict(p) for p in pairs],
                **{family: [dataclasses.asdict(g) for g in gens] for family, gens in listed.items()}}

    # ---- lifecycle ----------------------------------------------------------------------------
    def create(self, family: str, generation: str, model_version: str, item_generation: str | None = None,
               item_vector_scale: float | None = None, exact_vectors: bool = False,
               partitions: dict | None = None, properties: dict | None = None,
               index_type: str | None = None, covering: str | None = None,
               catalog_schema: str | None = None, catalog_at: str | None = None) -> str:
        """Create an empty generation index from the template, tuned for loading. A leftover
        index of the same generation (an earlier failed run) is replaced; a live one is refused.
        A user index records the item generation it pairs with (``item_generation``); an item index
        stored reduced (``facetrec.serving.mips``) records its ``item_vector_scale``, one that also indexes the
        flat copy for exact rows records ``exact_vectors`` (``facetrec.catalog.meta.pairing_fields``), one
        with vector partitions records them (``partitions``, ``facetrec.catalog.partitions``), one of a
        catalog records its schema (``catalog_schema``), and each maps its own fields (``properties``:
        its catalog's facets and its partitions', beside the template's)."""
        index = self.index_name(family, generation)
        if index == self.live_index(family):
            raise AlreadyLive(f"{index} is already live; a rerun of a published generation has nothing to do")
        named = index_aliases(self.es, [index]).get(index)
        if named:   # another arm's live index (or control's, for an arm): never replaced
            raise AlreadyLive(f"{index} is live behind {', '.join(sorted(named))}: pick another generation id")
        meta = {"state": LOADING, "model_version": model_version, "generation": generation}
        if family == "user":
            meta["item_generation"] = item_generation or generation
        else:   # its displayed fields have doc values (the template's title.keyword, the schema's image/url)
            meta[DOC_VALUES_META] = True
        if item_vector_scale is not None:
            meta["item_vector_scale"] = item_vector_scale
        if exact_vectors:
            meta["exact_vectors"] = True
        if partitions:
            meta["partitions"] = partitions
        if index_type:
            meta["index_type"] = index_type   # how item_embed is indexed (flat: every knn search is exact)
        if covering:
            meta["covering"] = covering       # its partitions hold every item: item_embed is flat, no catalog graph
        if catalog_schema:
            meta["catalog_schema"] = catalog_schema   # the catalog it was made with (facetrec.catalog.schema)
        if catalog_at:
            meta["catalog_at"] = catalog_at   # its catalog snapshot: item changes after it are replayed onto it
        self.es.indices.delete(index=index, ignore_unavailable=True)
        self.es.indices.create(index=index, settings={"refresh_interval": "-1", "number_of_replicas": 0, **LOADING_SETTINGS},
                               mappings={"_meta": meta, **({"properties": properties} if properties else {})})
        return index

    def aliased_indices(self) -> set[str]:
        """Every generation index some alias names: control's live pair and each experiment arm's."""
        pattern = [f"{self.family_prefix(f)}-*" for f in FAMILIES]
        return {i for i, names in index_aliases(self.es, pattern).items() if names}

    def meta(self, index: str) -> dict:
        return self.es.indices.get_mapping(index=index)[index]["mappings"].get("_meta", {})

    def finish_loading(self, index: str, max_segments: int = 0) -> None:
        """Restore refresh and replicas (from the template's values), refresh, force-merge to
        ``max_segments`` when asked (before the replicas are built: they copy the merged segments),
        wait for health."""
        self.es.indices.refresh(index=index)
        if max_segments:
            self.es.options(request_timeout=3600).indices.forcemerge(index=index, max_num_segments=max_segments)
        self.es.indices.put_settings(index=index, settings={"refresh_interval": "1s",
                                                            "number_of_replicas": self.settings.replicas,
                                                            **{key: None for key in LOADING_SETTINGS}})
        self.es.indices.refresh(index=index)
        self.wait_green(index)

    def wait_green(self, index: str) -> None:
        """Wait (at most FACETREC_GREEN_TIMEOUT_S) until every shard of ``index``, replicas
        included, is assigned; NotGreen says why not."""
        from elasticsearch import ApiError, ConnectionTimeout
        from elasticsearch import ConnectionError as ESConnectionError

        timeout = self.settings.green_timeout_s
        deadline = time.monotonic() + timeout
        health: dict = {}
        while True:   # a failing health call (a master being elected) is "not green yet"
            left = deadline - time.monotonic()
            try:
                health = dict(self.es.options(request_timeout=max(left, 1.0) + 30, ignore_status=408).cluster.health(
                    index=index, wait_for_status="green", timeout=f"{max(1, int(left * 1000))}ms"))
                if health.get("status") == "green" and not health.get("timed_out"):
                    return
            except (ApiError, ESConnectionError, ConnectionTimeout) as exc:
                health = {**health, "status": health.get("status", f"unknown ({type(exc).__name__})")}
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        nodes = health.get("number_of_data_nodes")
        raise NotGreen(
            f"{index} is {health.get('status')} after {timeout:g} s: {health.get('unassigned_shards')} unassigned and "
            f"{health.get('initializing_shards')} initializing shards ({self.settings.replicas} replica(s) per shard "
            f"on {nodes} data node(s)); the aliases were not moved. Bring the missing nodes back, or publish with "
            f"FACETREC_REPLICAS below the number of data nodes")

    def mark(self, index: str, state: str) -> None:
        self.update_meta(index, state=state)

    def update_meta(self, index: str, **fields) -> None:
        """Add or replace fields of the index's mapping ``_meta`` (a read-modify-write: under the lock)."""
        self.es.indices.put_mapping(index=index, meta={**self.meta(index), **fields})

    def cleanup_partial(self) -> list[str]:
        """Delete generations a crashed or fenced-off run left behind: still 'loading', or with no
        state at all (an index re-created by a late bulk write of a run that lost the lock). Never
        one an alias names."""
        partial = [g.index for family in FAMILIES for g in self.list(family)
                   if g.state not in (VALIDATED, ROLLED_BACK)]
        return delete_unless_aliased(self.es, partial)

    def swap(self, targets: dict[str, str], pin: dict[str, str] | None = None) -> None:
        """Point each family's alias at its target index, all in ONE _aliases call.

        Each ``remove`` names the index read just before with ``must_exist``, so if another writer
        moved an alias in between, the whole call fails and nothing moves. ``pin`` (family -> index)
        asserts an alias that must stay where it is (a users-only refresh pins the item alias to the
        item index its users were made for) in the same call."""
        actions = []
        for family, index in {**(pin or {}), **targets}.items():
            alias = self.alias(family)
            current = self.live_index(family)
            if family in (pin or {}) and family not in targets and current != index:
                raise RuntimeError(f"alias {alias} points at {current}, not {index}: another run moved it")
            if current:
                actions.append({"remove": {"index": current, "alias": alias, "must_exist": True}})
            actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
        self.es.indices.update_aliases(actions=actions)

    @staticmethod
    def _rollback_target(pairs: list[Pair], live: Pair | None) -> Pair:
        """The newest usable pair older than the live one (rolled-back and broken pairs are skipped)."""
        older = [p for p in pairs if p.usable and not p.live and not p.aliased
                 and (live is None or p.generation < live.generation)]
        if not older:
            raise NoPairToRollBackTo("no earlier validated pair of item and user generations to roll back to "
                                     "(see `facetrec index status`)")
        return older[-1]

    def rollback(self, fence=lambda step: None) -> dict[str, str]:
        """Move both aliases to the previous consistent pair in ONE _aliases call and mark the pair
        it left as rolled back, so a second rollback goes further back instead of returning to it."""
        pairs = self._marked_aliased(self.pairs())   # another arm's live pair is never a rollback target
        live = next((p for p in pairs if p.live), None)
        target = self._rollback_target(pairs, live)
        targets = {"item": target.item_index, "user": target.user_index}
        fence("rollback swap")
        self.swap(targets)
        if live is not None:
            self.mark(live.user_index, ROLLED_BACK)
        self.replay_item_changes(target.item_index, "rollback")
        return targets

    def replay_item_changes(self, item_index: str, step: str) -> dict | str:
        """A live pair gets the item changes logged since its catalog snapshot and every takedown in
        effect (a rollback's target; a publish rerun on a pair already live). The aliases have moved,
        so a failure is reported, not raised (takedowns are honoured at read time anyway)."""
        from facetrec.items.apply import ItemChanges

        since = self.meta(item_index).get("catalog_at")
        try:
            return ItemChanges(self.es, self.settings).replay(
                item_index, datetime.fromisoformat(since) if since else None,
                progress=lambda message: print(f"facetrec: [{step}] {message}", file=sys.stderr))
        except Exception as exc:  # noqa: BLE001 - the aliases have moved; the log keeps the changes
            message = (f"item changes not re-applied to {item_index} ({type(exc).__name__}: {exc}); "
                       "run `facetrec items replay`")
            print(f"facetrec: [{step}] {message}", file=sys.stderr)
            return f"failed: {message}"

    def retain(self, keep: int | None = None) -> list[str]:
        """Keep the live pair and the newest ``keep`` usable pairs; delete every other user index
        and every item index no kept pair uses. Never a live index, never one still loading (that
        is ``cleanup_partial``'s, under the lock)."""
        keep = keep or self.settings.generations_to_keep
        items, users = self.list("item"), self.list("user")
        pairs, listed = self._marked_aliased(self._pair_up(items, users)), [*items, *users]
        # Pairs live behind another alias (control's for an arm, each experiment arm's for control) are
        # kept and do not count against ``keep``: an arm's pair never pushes out control's rollback pairs.
        kept = [p for p in pairs if p.live or p.aliased] + \
            [p for p in pairs if p.usable and (p.live or not p.aliased)][-keep:]
        keep_indices = {p.user_index for p in kept} | {p.item_index for p in kept} | {g.index for g in listed if g.live}
        doomed = [g.index for g in listed if g.index not in keep_indices and g.state in (VALIDATED, ROLLED_BACK)]
        return delete_unless_aliased(self.es, doomed)


def index_aliases(es: Elasticsearch, indices: list[str]) -> dict[str, set[str]]:
    """{index: the aliases naming it} for those of ``indices`` (names or patterns) that exist. A
    failure to read them raises: a caller deciding what to delete or replace must not guess."""
    found = es.indices.get_alias(index=indices, ignore_unavailable=True, allow_no_indices=True)
    return {i: set((body or {}).get("aliases") or ()) for i, body in found.items()}


def delete_unless_aliased(es: Elasticsearch, indices: list[str]) -> list[str]:
    """Delete those of ``indices`` that no alias points at, read from the cluster now. If the aliases
    cannot be read, delete nothing: a later run's cleanup decides with the cluster in view."""
    if not indices:
        return []
    try:
        aliases = index_aliases(es, indices)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, deleting blind is worse
        print(f"facetrec: could not read the aliases ({type(exc).__name__}); left {', '.join(indices)} for the "
              "next run to clean up", file=sys.stderr)
        return []
    doomed = [i for i in indices if not aliases.get(i)]
    for index in doomed:
        es.options(ignore_status=404).indices.delete(index=index)
    return doomed
