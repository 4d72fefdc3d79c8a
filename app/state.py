"""What one service process holds: its parts, built once by the application factory (``app.create_app``)."""

from __future__ import annotations

import dataclasses

from elasticsearch import Elasticsearch
from flask import Flask, current_app

from app.arms import Arms
from facetrec.catalog.facets import FacetCache
from facetrec.catalog.rows import RowCatalog
from facetrec.events.apply import UserEvents
from facetrec.items.apply import ItemChanges
from facetrec.items.takedowns import Takedowns
from facetrec.metrics import Metrics
from facetrec.serving.homepage import SearchConfig
from facetrec.serving.recall_monitor import RecallMonitor
from facetrec.settings import Settings

EXTENSION = "facetrec"


@dataclasses.dataclass
class Service:
    settings: Settings
    catalog: RowCatalog          # the row config
    es: Elasticsearch            # one client per process (per gunicorn worker)
    metrics: Metrics
    search: SearchConfig         # control's (the aliases); each arm's is in ``arms``
    facets: FacetCache           # the live generation's facet values
    arms: Arms                   # each user's experiment arm and what serving it needs
    recall_monitor: RecallMonitor   # control's
    events: UserEvents           # fresh events, to control and every arm
    items: ItemChanges           # item changes (takedowns, new items), to control and every arm
    takedowns: Takedowns         # the taken-down items every page leaves out


def init_app(app: Flask, service: Service) -> None:
    app.extensions[EXTENSION] = service


def service_of(app: Flask | None = None) -> Service:
    """The service of ``app`` (default: the app handling the current request)."""
    return (app or current_app).extensions[EXTENSION]
