"""facetrec: personalized, faceted recommendation rows served from Elasticsearch.

This package holds what the service (``app``) and the offline pipeline (``ingest``) share, by concept:

* ``facetrec.catalog``: the catalog's shape (row configs and their validation, facets, vector
  partitions, the index fields) and what a generation records about itself (``meta``, ``counts``);
* ``facetrec.serving``: a homepage: the planner, the row searches, one ``_msearch``, scores,
  the inner-product reduction, diversity, the recall monitor;
* ``facetrec.events``: fresh events: the batch, the write-ahead log, applying it to user vectors;
* ``facetrec.model``: the model's serving side: the exported user encoder, the ranker, tie order;
* ``facetrec.local``: the local Elasticsearch node (its launcher and plugin sources) and processes.

Beside them: ``settings`` (the one typed settings object, a leaf), ``errors`` (the error family),
``es`` (the Elasticsearch client and its error bodies), ``metrics`` (DogStatsD) and ``experiments``
(experiment arms: which pair serves which user).
"""

__version__ = "0.1.0"
