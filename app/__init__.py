"""The facetrec homepage service (Flask; gunicorn in production: `gunicorn -c python:app.gunicorn_conf app.wsgi`)."""

from __future__ import annotations

import logging

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from app.arms import Arms
from facetrec.catalog.counts import StatsCache
from facetrec.catalog.facets import FacetCache
from facetrec.catalog.rows import RowCatalog
from facetrec.errors import ConfigurationError
from facetrec.es import alias_index, serving_client
from facetrec.events.apply import UserEvents
from facetrec.experiments import CONTROL, ExperimentCache
from facetrec.items.apply import ItemChanges
from facetrec.items.log import ItemChangeLog
from facetrec.items.takedowns import Takedowns
from facetrec.metrics import make_metrics
from facetrec.model.user_encoder import EncoderRegistry
from facetrec.serving.homepage import SearchConfig
from facetrec.serving.recall_monitor import RecallMonitor
from facetrec.settings import Settings


class OrjsonProvider(DefaultJSONProvider):
    """Responses through orjson (a homepage's JSON in a fraction of the standard library's time),
    keys in the order the service builds them; requests are read as Flask reads them."""

    def _bytes(self, obj) -> bytes:
        try:
            return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:   # what orjson cannot write (an integer beyond 64 bits echoed from a request)
            return super().dumps(obj).encode()

    def dumps(self, obj, **kwargs) -> str:
        return self._bytes(obj).decode() if not kwargs else super().dumps(obj, **kwargs)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self._bytes(obj), mimetype=self.mimetype)


log = logging.getLogger("facetrec.service")
MAX_BODY_BYTES = 64 * 1024  # a rows request is a few KiB; anything larger is refused with 413 unread


def check_rows_against_live_generation(facets: FacetCache, catalog: RowCatalog) -> None:
    """Refuse to start (ConfigurationError, with the reasons) when a configured row filters on a facet
    the live generation's catalog schema lacks; when the live generation cannot be read (no pair yet,
    the cluster down) the rows are served over the configured schema and each page says what fails."""
    try:
        live = facets.catalog_of(alias_index(facets.es, facets.item_alias))
    except Exception as exc:  # noqa: BLE001 - checked again by every request against the live generation
        log.warning("live generation not read at start; rows checked against the configured catalog schema",
                    extra={"event": "live_schema_unread", "detail": str(exc)[:300]})
        return
    if live.schema is not None and (catalog.schema is None or live.schema.to_dict() != catalog.schema.to_dict()):
        problems = catalog.unservable(live.schema)
        if problems:
            raise ConfigurationError("the row config cannot be served by the live generation: " + "; ".join(problems)
                                     + " (publish a generation of this catalog, or serve a row config that fits it)")


def create_app(settings: Settings | None = None, catalog: RowCatalog | None = None) -> Flask:
    """Application factory: one Elasticsearch client per process (per gunicorn worker), created here."""
    from app import api, auth, docs, errors, items, logs, page, state

    settings = settings or Settings.from_env()
    catalog = catalog or RowCatalog.from_settings(settings)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # A dead node's request goes to the next node; nothing else is retried: a request must answer
    # (or fail with 503) within the timeout.
    es = serving_client(settings)
    metrics = make_metrics(settings, component="service")
    # Taken-down items, left out of every page whatever pair serves it (facetrec.items.takedowns).
    takedowns = Takedowns(ItemChangeLog(es, settings), settings.takedown_poll_s)
    # The row planner's per-generation stats: read from each item generation's _meta once.
    search = SearchConfig.from_settings(settings, stats=StatsCache(list(catalog.rows.values()), catalog.user_filters),
                                        schema=catalog.schema, takedowns=takedowns)
    facets = FacetCache(es, settings.item_alias, catalog)
    check_rows_against_live_generation(facets, catalog)
    # Experiment arms: each user's arm, and each arm's search config, metrics and recall monitor (app.arms).
    experiments = ExperimentCache(es, settings, settings.experiment_refresh_s, timeout_s=settings.es_request_timeout_s)
    arms = Arms(settings, experiments, search, metrics,
                lambda target, arm_metrics: RecallMonitor(es, target, arm_metrics, settings.recall_sample_rate,
                                                          settings.index_type))
    state.init_app(app, state.Service(
        settings=settings, catalog=catalog, es=es, metrics=metrics, search=search,
        facets=facets, arms=arms,
        recall_monitor=arms.serving(CONTROL).monitor,
        # Fresh events go to the live user index of control and of every other arm of the experiment.
        events=UserEvents(es, settings, EncoderRegistry(settings.models_root, threads=1),
                          arm_user_aliases=experiments.arm_user_aliases),
        # Item changes go to the live item index of control and of every other arm, each vector by its model.
        items=ItemChanges(es, settings, EncoderRegistry(settings.models_root, threads=1, kind="item"),
                          takedowns=takedowns, arm_item_aliases=experiments.arm_item_aliases),
        takedowns=takedowns))
    logs.init_app(app)
    auth.init_app(app, settings.api_token_list, settings.admin_token_list)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(items.bp)
    app.register_blueprint(page.bp)
    app.register_blueprint(docs.bp)
    return app
