"""Serving a homepage: one user GET by ``_id``, then ONE ``_msearch``, one search per row.

* ``homepage``: ``recommend`` (read a consistent page, rank, assemble) and ``SearchConfig``;
* ``planner``: a plan per row from its estimated matches (exact, partition, post-filtered, filtered walk);
* ``page_search``: the plans as the ``_msearch`` lines (one shared search for post-filtered rows);
* ``row_queries``: one row's search body; ``scoring``: Elasticsearch's score transforms and inverses;
* ``mips``: the inner-product reduction (unit vectors with one more coordinate);
* ``diversity``: crowding and MMR over a row's candidates;
* ``recall_monitor``: a sampled share of pages re-asked exactly, off the request path.
"""
