"""Build a homepage: one user-vector GET, then ONE ``_msearch`` with one search per row.

Used by the Flask service (through the aliases) and by the re-index validation gate (against a
new generation's concrete index names, before any alias moves).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Iterable, Sequence

from elasticsearch import ApiError, Elasticsearch, NotFoundError

from facetrec.catalog.counts import GenerationStats, StatsCache
from facetrec.catalog.fields import ITEM_VECTOR_FIELD, MAX_SEEN_ITEMS
from facetrec.catalog.meta import read_meta
from facetrec.catalog.partitions import FIELD_PREFIX as PARTITION_FIELD_PREFIX
from facetrec.catalog.rows import Row
from facetrec.catalog.schema import CatalogSchema
from facetrec.errors import ClusterUnavailable
from facetrec.es import UNAVAILABLE_STATUSES, cluster_errors_as_unavailable, error_reason, error_type, with_timeout
from facetrec.es import script_lang as resolve_script_lang
from facetrec.metrics import Metrics, NoMetrics
from facetrec.model import ranker as ranking
from facetrec.serving import diversity, mips
from facetrec.serving.hit_fields import hit_generation, hit_id, raw_hits
from facetrec.serving.page_search import PageSearch, build_page_search, row_mode
from facetrec.serving.planner import Thresholds
from facetrec.serving.scoring import knn_score_to_dot, script_score_to_dot
from facetrec.settings import QUANTIZED_INDEX_TYPES, Settings

log = logging.getLogger("facetrec.serving.homepage")
PAGE_READS = 3   # a page read during an alias swap is read again, at most this many times in all
# What a page reads of its _msearch response (Elasticsearch then builds and sends only that: about a
# third of the bytes, and of the service's parsing).
_HIT = ("_id", "_index", "_score", "_source", "fields")
MSEARCH_FILTER_PATH = ",".join(
    ["responses.took", "responses.timed_out", "responses.error", "responses.status",
     *(f"responses.hits.hits.{key}" for key in _HIT),
     *(f"responses.aggregations.*.top.hits.hits.{key}" for key in _HIT)])


class InconsistentGenerations(ClusterUnavailable):
    """The user vector and the item hits kept coming from different pairs (a swap in progress):
    the page is refused (503 + Retry-After) rather than served with a vector of another model."""

    code = "generation_swap"
    public = "the index is switching generations; retry shortly"
    log_event = "mixed_generations"


@dataclasses.dataclass(frozen=True)
class UserVector:
    user_id: str
    vector: list[float]
    seen_item_ids: list[str]
    generation: str | None
    item_generation: str | None = None   # the item generation this vector was made for
    item_vector_scale: float | None = None  # set when that generation stores reduced vectors (facetrec.serving.mips)
    item_exact_vectors: bool = False        # that generation indexes the flat copy exact rows scan
    index: str | None = None                # the user generation's index the vector was read from
    interests: tuple[list[float], ...] | None = None   # a multi-interest model's K vectors (vector is the first)

    def with_interest(self, k: int) -> "UserVector":
        """The same user as seen by a row searched with interest ``k`` (``facetrec.serving.interests``)."""
        if not k or not self.interests:
            return self
        return dataclasses.replace(self, vector=self.interests[k])

    @functools.cached_property
    def norm(self) -> float:
        return math.sqrt(sum(x * x for x in self.vector))

    @property
    def pairs_with(self) -> str | None:
        """The item generation whose hits this vector may be scored against (user indices made
        before pairs were recorded pair with the item generation of their own id)."""
        return self.item_generation or self.generation


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a page is searched: where to read (the aliases when serving, an experiment arm's aliases,
    or a new generation's concrete indices when validating) and the retrieval settings it is asked with."""
    item_index: str
    user_index: str
    similarity: str
    default_mode: str = "knn"
    num_candidates_factor: int = 10
    dedupe_across_rows: bool = True
    request_timeout_s: float = 1.0
    script_lang: str = "auto"              # script_score: auto | painless | facetrec_vector
    rescore_oversample: float = 0.0        # knn on quantized vectors: rescore k x this with the floats (0: off)
    thresholds: Thresholds = Thresholds()  # the row planner's (facetrec.serving.planner)
    stats: StatsCache | None = None        # the pairs' row counts and partitions; None: rows are not planned
    rankers: ranking.RankerRegistry | None = None   # the pairs' learned rankers; None: rows keep retrieval order
    schema: CatalogSchema | None = None    # the configured catalog schema: for pairs that record none (or not known)
    takedowns: Any = None                  # the taken-down items every page leaves out (facetrec.items.takedowns)

    @classmethod
    def from_settings(cls, settings: Settings, *, item_index: str | None = None, user_index: str | None = None,
                      **changes: Any) -> "SearchConfig":
        """The service's search config (the aliases, the configured mode and limits); a caller may name
        concrete indices (the validation gate) or change a field (a benchmark's timeout)."""
        fields = dict(item_index=item_index or settings.item_alias, user_index=user_index or settings.user_alias,
                      similarity=settings.similarity, default_mode=settings.retrieval_mode,
                      num_candidates_factor=settings.num_candidates_factor,
                      dedupe_across_rows=settings.dedupe_across_rows, request_timeout_s=settings.es_request_timeout_s,
                      script_lang=settings.script_lang,
                      rescore_oversample=settings.rescore_oversample if settings.index_type in QUANTIZED_INDEX_TYPES
                      else 0.0, thresholds=Thresholds.from_settings(settings),
                      rankers=ranking.RankerRegistry(settings.models_root))
        return cls(**{**fields, **changes})


def fetch_user(es: Elasticsearch, user_index: str, user_id: str, timeout_s: float) -> UserVector | None:
    """The user's vector and seen items, or None for a user the live generation does not know.
    A missing user index/alias or an overloaded cluster is ClusterUnavailable (a 503), never an
    unknown user: serving everyone popularity rows with a 200 would hide the outage."""
    try:
        with cluster_errors_as_unavailable():
            doc = with_timeout(es, timeout_s).get(
                index=user_index, id=user_id,
                source_includes=["user_embed", "seen_item_ids", "generation", "item_generation", "item_vector_scale",
                                 "item_exact_vectors", "user_interests"])
    except NotFoundError as exc:
        if error_type(exc) == "index_not_found_exception":
            raise ClusterUnavailable(f"the user index {user_index} does not exist: publish a generation "
                                     "(`facetrec pipeline run`) or check the alias") from exc
        return None
    except ApiError as exc:  # credentials, a closed index, ...: the cluster cannot serve this page
        raise ClusterUnavailable(f"user GET failed with {exc.status_code}: {exc}") from exc
    src = doc["_source"]
    return UserVector(user_id=user_id, vector=src["user_embed"],
                      seen_item_ids=(src.get("seen_item_ids") or [])[-MAX_SEEN_ITEMS:],
                      generation=src.get("generation"), item_generation=src.get("item_generation"),
                      item_vector_scale=src.get("item_vector_scale"),
                      item_exact_vectors=src.get("item_exact_vectors") is True, index=doc.get("_index"),
                      interests=tuple(src["user_interests"]) if src.get("user_interests") else None)


INTERNAL_FIELDS = frozenset(("item_id", "popularity", "generation", ITEM_VECTOR_FIELD))


def _item(hit: dict, source: str, mode: str, similarity: str, user: UserVector | None) -> dict:
    """A response item: its id, its score and the catalog schema's displayed fields (the ``_source``
    its search asked for: ``CatalogSchema.source_fields``)."""
    src = hit.get("_source", {})
    score = float(src.get("popularity") or 0.0) if source == "popular" else model_dot(hit, mode, similarity, user)
    item = {"id": hit["_id"], "score": round(score, 6)}
    item.update((key, value) for key, value in src.items() if key not in INTERNAL_FIELDS)
    return item


def recommend(es: Elasticsearch, target: SearchConfig, user_id: str, rows: Sequence[Row],
              user_filters: Sequence[dict] = (), *, mode: str | None = None, sizes: dict[str, int] | None = None,
              metrics: Metrics | None = None, request_id: str | None = None,
              detailed_errors: bool = False, observe: Callable[..., None] | None = None) -> dict:
    """The homepage of ``user_id``: ``{"user_id", "generation", "user_generation", "ranker", "rows": [...]}``.

    Three steps: read the page from ONE pair (``read_consistent_page``: the user GET and the
    ``_msearch``, read again while a swap mixes them), rank its ranked rows (``_rank_page``), and
    assemble the rows (``_assemble_row``: de-duplication across rows, diversity, scores).

    A failing row carries ``"error_code"`` and a safe ``"error"`` message (Elasticsearch's reason
    appended only with ``detailed_errors``, for operators: the validation gate) and no items while
    the others are returned. Raises ClusterUnavailable when Elasticsearch cannot be reached at all,
    and InconsistentGenerations when the user vector and the item hits still come from different
    pairs after PAGE_READS reads. ``observe(user, rows, user_filters, mode, sizes, responses, interests)``
    (``interests``: row id -> the user's interest a row was searched with, when not the current one) is
    handed the page as read (the live recall monitor); it must return at once, and its failure never
    fails the page.
    """
    metrics = metrics or NoMetrics()
    user, page, responses = read_consistent_page(es, target, user_id, rows, user_filters, mode, sizes, metrics)
    interests = {rs.row.id: rs.interest for rs in page.rows if rs.interest}
    if observe is not None:
        try:
            observe(user, rows, user_filters, mode, sizes, responses, interests)
        except Exception:  # noqa: BLE001 - monitoring must never cost a page
            log.exception("page observer failed", extra={"event": "observer_failed", "request_id": request_id})
    ranker_status, ranker, ranked = _rank_page(es, target, user, rows, responses, mode, metrics, interests)
    # Taken-down items are left out whatever pair served the page (one it has not reached yet, too).
    hidden = target.takedowns.ids() if target.takedowns is not None else frozenset()
    taken: set[str] = set()
    out_rows = [_assemble_row(row, searched, response, target, user, mode, sizes, ranked, taken, metrics,
                              request_id, detailed_errors, hidden)
                for row, searched, response in zip(rows, page.rows, responses)]
    generation = next((r["generation"] for r in out_rows if r.get("generation")), None) or (user.pairs_with if user else None)
    return {"user_id": user_id, "generation": generation, "user_generation": user.generation if user else None,
            "ranker": {"status": ranker_status, "version": ranker.version if ranker and ranked else None},
            "rows": out_rows}


def read_consistent_page(es: Elasticsearch, target: SearchConfig, user_id: str, rows: Sequence[Row],
                         user_filters: Sequence[dict], mode: str | None, sizes: dict[str, int] | None,
                         metrics: Metrics) -> tuple["UserVector | None", PageSearch, list]:
    """The user vector and the rows' responses, all from ONE pair: an alias swap that lands between
    the user GET and the ``_msearch`` (or between its searches) makes the page be read again, and a
    page still mixed after PAGE_READS reads is InconsistentGenerations."""
    for _ in range(PAGE_READS):
        user, page, responses = _read_page(es, target, user_id, rows, user_filters, mode, sizes, metrics)
        problem = _mixed(user, responses)
        if problem is None:
            return user, page, responses
        metrics.increment("homepage.mixed_generation_retry")
    metrics.increment("homepage.mixed_generation_refused")
    raise InconsistentGenerations(f"{problem} after {PAGE_READS} reads (an alias swap in progress?)")


def _assemble_row(row: Row, searched, response: dict, target: SearchConfig, user: "UserVector | None",
                  mode: str | None, sizes: dict[str, int] | None, ranked: dict[int, list[int]], taken: set[str],
                  metrics: Metrics, request_id: str | None, detailed_errors: bool,
                  hidden: frozenset[str] = frozenset()) -> dict:
    """One row of the response from its search's response: the ranker's order where it ran, the items
    earlier rows showed left out (``taken``, updated) and the taken-down ones (``hidden``), diversity,
    the model's scores."""
    source = "personalized" if user else "popular"
    this_mode = "popular" if user is None else row_mode(row, mode, target)
    tags = [f"row:{row.id}", f"mode:{this_mode}", f"plan:{searched.plan}"]
    size = (sizes or {}).get(row.id, row.size)
    entry: dict[str, Any] = {"id": row.id, "title": row.title, "source": source, "plan": searched.plan, "items": []}
    if "error" in response:
        entry["error_code"], entry["error"] = _row_error(response, row, request_id, detailed_errors)
        metrics.increment("homepage.row.error", [*tags, f"code:{entry['error_code']}"])
        return entry
    metrics.timing("es.took", response.get("took", 0), tags)
    if response.get("timed_out"):
        entry["partial"] = True
        metrics.increment("homepage.row.timed_out", tags)
    retrieved = response["hits"]["hits"]
    candidates: Iterable[dict] = retrieved
    if id(response) in ranked:   # the ranker's order over the row's candidates, before de-duplication
        candidates = (retrieved[i] for i in ranked[id(response)])
        entry["ranked"] = True
    hits = []   # read (and shaped: hit_fields.ShapedHits) only as far as the row needs
    for hit in candidates:
        if hit["_id"] in hidden or (target.dedupe_across_rows and hit["_id"] in taken):
            continue
        hits.append(hit)
        if len(hits) == size and not row.diversity:
            break
    seen_by = user.with_interest(searched.interest) if user else None   # the vector this row was searched with
    items = [_item(hit, source, "knn" if this_mode == "popular" else this_mode, target.similarity, seen_by)
             for hit in hits]
    if row.diversity:   # after cross-row de-duplication, over the row's over-fetched candidates
        items, entry["diversity"] = diversity.apply(row.diversity, items, size, _item_vectors(hits, user),
                                                    by_order=entry.get("ranked", False),
                                                    category_field=searched.category_field)
    if items:   # every hit of a page comes from one item generation (_mixed)
        entry["generation"] = hits[0].get("_source", {}).get("generation")
    entry["items"] = items
    taken.update(item["id"] for item in items)
    if not items:
        metrics.increment("homepage.row.empty", tags)
    elif len(items) < size:   # its filter matches fewer, or the walk found too few (planner)
        metrics.increment("homepage.row.short", tags)
    if user is None:
        metrics.increment("homepage.row.fallback", tags)
    return entry


def _rank_page(es: Elasticsearch, target: SearchConfig, user: UserVector | None, rows: Sequence[Row], responses: list,
               mode: str | None, metrics: Metrics, interests: dict[str, int] | None = None
               ) -> tuple[str, "ranking.Ranker | None", dict[int, list[int]]]:
    """(status, ranker, {id(response): the hits' positions, best first}) for the page's ranked rows:
    those with ``rank`` in the row config, a user vector and hits. The pair's ranker (that of the
    user vector's model version) scores every ranked row's first ``rank.candidates`` hits in one
    call (the hits beyond them, fetched for de-duplication, follow in retrieval order). A pair
    without a ranker, or whose ranker cannot be loaded or fails, serves retrieval order, says so and
    is counted."""
    wanted = [(row, r) for row, r in zip(rows, responses) if row.rank_candidates and "hits" in r and r["hits"]["hits"]]
    if user is None or not wanted or target.rankers is None:
        return ranking.NOT_ASKED, None, {}
    try:   # the user index's model version, read once per generation
        version = target.rankers.model_version_of(
            user.index, lambda index: read_meta(with_timeout(es, target.request_timeout_s), index).model_version) \
            if user.index else None
    except Exception as exc:  # noqa: BLE001 - the page is served in retrieval order, said so
        log.warning("model version unreadable; rows keep retrieval order",
                    extra={"event": "ranker_unavailable", "detail": str(exc)[:500]})
        version, status, ranker = None, ranking.UNAVAILABLE, None
    else:
        status, ranker = target.rankers.get(version)
    if ranker is not None and target.similarity == "cosine" and user.item_vector_scale is None:
        log.warning("a cosine pair's scores are no dot products: rows keep retrieval order",
                    extra={"event": "ranker_unavailable", "model_version": version})
        status, ranker = ranking.UNAVAILABLE, None
    order: dict[int, list[int]] = {}
    if ranker is not None:
        started = time.perf_counter()
        # What the ranker was trained on: the model's raw dot products (a unit query vector's scaled back).
        page = []
        for row, response in wanted:
            hits = raw_hits(response["hits"]["hits"])[:row.rank_candidates]   # ids and scores: no shaping
            seen_by = user.with_interest((interests or {}).get(row.id, 0))   # the vector the row was searched with
            scale = seen_by.norm if target.similarity == "dot_product" and user.item_vector_scale is None else 1.0
            page.append(([hit_id(h) for h in hits],
                         [scale * model_dot(h, row_mode(row, mode, target), target.similarity, seen_by) for h in hits]))
        try:
            ranked = ranker.rank_rows(user.seen_item_ids, page)
        except Exception as exc:  # noqa: BLE001 - a failing ranker costs the order, never the page
            log.exception("ranker failed; rows keep retrieval order",
                          extra={"event": "ranker_failed", "model_version": version, "detail": str(exc)[:500]})
            status, ranker, ranked = ranking.UNAVAILABLE, None, []
        for (_, response), positions in zip(wanted, ranked):
            rest = range(len(positions), len(response["hits"]["hits"]))
            order[id(response)] = [*positions.tolist(), *rest]
        metrics.timing("homepage.rank", (time.perf_counter() - started) * 1000)
    metrics.increment("homepage.ranker", [f"status:{status}"])
    return status, ranker, order


def model_dot(hit: dict, mode: str, similarity: str, user: UserVector | None) -> float:
    """A personalized hit's score as the model's dot product (what rows report and the ranker reads)."""
    if mode == "script_score":
        return script_score_to_dot(hit["_score"])
    if user is not None and user.item_vector_scale is not None:
        return mips.knn_score_to_dot(hit["_score"], user.norm, user.item_vector_scale)
    return knn_score_to_dot(hit["_score"], similarity)


def _item_vectors(hits: list[dict], user: UserVector | None) -> dict[str, list[float]] | None:
    """Item vectors of a diverse row's candidates (its MMR similarity), in the model's own space:
    a reduced generation's extra coordinate dropped (cosine is then the raw vectors')."""
    vectors = {hit["_id"]: hit["_source"][ITEM_VECTOR_FIELD] for hit in hits if ITEM_VECTOR_FIELD in hit.get("_source", {})}
    if not vectors:
        return None
    if user is not None and user.item_vector_scale is not None:
        return {item_id: mips.model_direction(vector) for item_id, vector in vectors.items()}
    return vectors


ROW_ERROR_MESSAGES = {
    "search_rejected": "this row's search was rejected; the other rows are served",
    "search_unavailable": "this row's search could not run (cluster busy); retry shortly",
    "search_failed": "this row's search failed; the other rows are served",
}


def _row_error(response: dict, row: Row, request_id: str | None, detailed: bool = False) -> tuple[str, str]:
    """A stable code and a short safe message for the caller; Elasticsearch's reason (which can hold
    mapping details or a preview of the user's vector) goes to the structured log only."""
    status = int(response.get("status") or 500)
    code = "search_rejected" if 400 <= status < 500 and status != 429 else \
        "search_unavailable" if status in UNAVAILABLE_STATUSES else "search_failed"
    reason = error_reason(response.get("error"))
    log.warning("row failed", extra={"event": "row_error", "request_id": request_id, "row": row.id,
                                     "status": status, "code": code, "detail": str(reason)[:1000]})
    message = ROW_ERROR_MESSAGES[code] + (f" (request {request_id})" if request_id else "")
    return code, f"{message}: {reason}" if detailed else message


def pair_stats(es: Elasticsearch, target: SearchConfig, user: UserVector | None) -> GenerationStats | None:
    """What the planner knows of the item generation ``user``'s vector pairs with (None: the target
    plans nothing, or the user has no vector). A failure to read them is ClusterUnavailable."""
    if target.stats is None or user is None:
        return None
    with cluster_errors_as_unavailable():
        return target.stats.get(es, target.item_index, user.pairs_with, target.request_timeout_s)


def _read_page(es: Elasticsearch, target: SearchConfig, user_id: str, rows: Sequence[Row], user_filters: Sequence[dict],
               mode: str | None, sizes: dict[str, int] | None,
               metrics: Metrics) -> tuple[UserVector | None, PageSearch, list]:
    """One read of a page: the user GET, then the one _msearch; its responses, one per row."""
    user = fetch_user(es, target.user_index, user_id, target.request_timeout_s)
    lang = "painless"
    if user and any(row_mode(row, mode, target) == "script_score" for row in rows):
        with cluster_errors_as_unavailable():
            lang = resolve_script_lang(es, target.script_lang, target.request_timeout_s)
    stats = pair_stats(es, target, user)
    page = build_page_search(rows, user, user_filters, target, mode, sizes, script_lang=lang, stats=stats,
                             schema=(stats.schema if stats else None) or target.schema)
    with cluster_errors_as_unavailable():
        started = time.perf_counter()
        result = with_timeout(es, target.request_timeout_s).msearch(searches=page.lines, filter_path=MSEARCH_FILTER_PATH)
        metrics.timing("es.msearch.roundtrip", (time.perf_counter() - started) * 1000)
    return user, page, page.split(result["responses"])


def _mixed(user: UserVector | None, responses: list) -> str | None:
    """Why this read mixes generations, or None: every hit must come from ONE item index, and from
    the item generation the user vector was made for. A row refused for its query vector's length
    is the same race seen earlier: a swap between a pair stored raw and one stored reduced
    (``facetrec.serving.mips``) landed between the user GET and the ``_msearch``."""
    for response in responses:
        if "error" in response and "dimensions" in str(response["error"]):
            return "a row's query vector did not fit the item index (a swap between raw and reduced pairs?)"
        if "error" in response and PARTITION_FIELD_PREFIX in str(response["error"]):
            return "a row's vector partition is not in the item index (a swap to a pair made without it?)"
    hits = [h for r in responses if "hits" in r for h in raw_hits(r["hits"]["hits"])]
    indices = {h["_index"] for h in hits}
    if len(indices) > 1:
        return f"rows came from {len(indices)} item indices"
    if user is None or user.pairs_with is None:
        return None
    generations = {hit_generation(h) for h in hits}
    if generations - {user.pairs_with}:
        return (f"the user vector (generation {user.generation}) pairs with items {user.pairs_with}, "
                f"the hits came from items {sorted(g for g in generations if g)}")
    return None
