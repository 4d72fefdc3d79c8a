"""facetrec: personalized, faceted recommendation rows served from Elasticsearch.

This package holds what the service (``app``) and the offline pipeline (``ingest``) share:
settings, the Elasticsearch connection, the local-node launcher and the row query builder.
"""

__version__ = "0.1.0"
