"""Index generations: dated ``item_index-*`` / ``user_index-*`` indices behind two aliases.

A generation is loaded with refresh off and no replicas, restored before it is validated, and
marked in its mapping ``_meta`` (``state``: loading -> validated). The aliases move in ONE
``_aliases`` call, so readers see the old pair or the new pair, never a mix. The newest
``generations_to_keep`` validated generations of each family stay for rollback.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from elasticsearch import Elasticsearch

from facetrec.es import alias_index
from facetrec.settings import Settings

FAMILIES = ("item", "user")
LOADING, VALIDATED = "loading", "validated"


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


class AlreadyLive(RuntimeError):
    pass


class Generations:
    def __init__(self, es: Elasticsearch, settings: Settings):
        self.es, self.settings = es, settings

    def alias(self, family: str) -> str:
        return {"item": self.settings.item_alias, "user": self.settings.user_alias}[family]

    def index_name(self, family: str, generation: str) -> str:
        return f"{self.alias(family)}-{generation}"

    # ---- inspection ---------------------------------------------------------------------------
    def live_index(self, family: str) -> str | None:
        return alias_index(self.es, self.alias(family))

    def list(self, family: str) -> list[GenerationInfo]:
        pattern = f"{self.alias(family)}-*"
        mappings = self.es.options(ignore_status=404).indices.get_mapping(index=pattern, allow_no_indices=True)
        if not mappings or "error" in mappings:
            return []
        counts = {row["index"]: int(row["docs.count"] or 0)
                  for row in self.es.cat.indices(index=pattern, format="json", h="index,docs.count")}
        live = self.live_index(family)
        prefix = f"{self.alias(family)}-"
        out = []
        for index, body in mappings.items():
            meta = body.get("mappings", {}).get("_meta", {})
            out.append(GenerationInfo(family, index, index[len(prefix):], counts.get(index, 0), index == live,
                                      meta.get("state", "unknown"), meta.get("model_version")))
        return sorted(out, key=lambda g: g.generation)

    def status(self) -> dict:
        return {family: [dataclasses.asdict(g) for g in self.list(family)] for family in FAMILIES}

    # ---- lifecycle ----------------------------------------------------------------------------
    def create(self, family: str, generation: str, model_version: str) -> str:
        """Create an empty generation index from the template, tuned for loading. A leftover
        index of the same generation (an earlier failed run) is replaced; a live one is refused."""
        index = self.index_name(family, generation)
        if index == self.live_index(family):
            raise AlreadyLive(f"{index} is already live; a rerun of a published generation has nothing to do")
        self.es.indices.delete(index=index, ignore_unavailable=True)
        self.es.indices.create(index=index, settings={"refresh_interval": "-1", "number_of_replicas": 0},
                               mappings={"_meta": {"state": LOADING, "model_version": model_version,
                                                   "generation": generation}})
        return index

    def finish_loading(self, index: str, force_merge: bool = False) -> None:
        """Restore refresh and replicas (from the template's values), refresh, wait for health."""
        self.es.indices.put_settings(index=index, settings={"refresh_interval": "1s",
                                                            "number_of_replicas": self.settings.replicas})
        self.es.indices.refresh(index=index)
        if force_merge:
            self.es.options(request_timeout=3600).indices.forcemerge(index=index, max_num_segments=1)
            self.es.indices.refresh(index=index)
        self.es.options(request_timeout=600).cluster.health(index=index, wait_for_status="green", timeout="300s")

    def mark(self, index: str, state: str) -> None:
        meta = self.es.indices.get_mapping(index=index)[index]["mappings"].get("_meta", {})
        self.es.indices.put_mapping(index=index, meta={**meta, "state": state})

    def delete(self, index: str) -> None:
        if index in {self.live_index(f) for f in FAMILIES}:
            raise AlreadyLive(f"refusing to delete live index {index}")
        self.es.indices.delete(index=index, ignore_unavailable=True)

    def cleanup_partial(self) -> list[str]:
        """Delete generations a crashed run left in state 'loading' (never a live one)."""
        removed = []
        for family in FAMILIES:
            for g in self.list(family):
                if g.state != VALIDATED and not g.live:
                    self.es.indices.delete(index=g.index, ignore_unavailable=True)
                    removed.append(g.index)
        return removed

    def swap(self, targets: dict[str, str]) -> None:
        """Point each family's alias at its target index, all in ONE _aliases call."""
        actions = []
        for family, index in targets.items():
            alias = self.alias(family)
            current = self.live_index(family)
            if current and current != index:
                actions.append({"remove": {"index": current, "alias": alias}})
            actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
        self.es.indices.update_aliases(actions=actions)

    def previous(self, family: str) -> str | None:
        validated = [g for g in self.list(family) if g.state == VALIDATED]
        live = self.live_index(family)
        older = [g.index for g in validated if live is None or g.index < live]
        return older[-1] if older else None

    def rollback(self) -> dict[str, str]:
        targets = {}
        for family in FAMILIES:
            prev = self.previous(family)
            if prev:
                targets[family] = prev
        if not targets:
            raise RuntimeError("no earlier validated generation to roll back to (see `facetrec index status`)")
        self.swap(targets)
        return targets

    def retain(self, keep: int | None = None) -> list[str]:
        """Delete validated generations beyond the newest ``keep`` of each family (never the live one)."""
        keep = keep or self.settings.generations_to_keep
        removed = []
        for family in FAMILIES:
            validated = [g for g in self.list(family) if g.state == VALIDATED]
            live = self.live_index(family)
            keepers = {g.index for g in validated[-keep:]} | {live}
            for g in validated:
                if g.index not in keepers:
                    self.es.indices.delete(index=g.index, ignore_unavailable=True)
                    removed.append(g.index)
        return removed
