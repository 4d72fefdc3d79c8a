"""The catalog: what items look like and what a generation of them records.

* ``rows``: the row config (rows, their filters over declared facets, the homepage) and its validation;
* ``fields``: the item and user index fields every part names;
* ``facets``: the values the live item generation holds per facet (``GET /v1/facets``);
* ``partitions``: vector partitions (a graph per value of a partitioned facet);
* ``meta``: ONE reader of a generation's ``_meta`` (``read_meta``);
* ``counts``: each row's matches per generation, what the planner estimates from;
* ``row_info``: what a caller may ask of each row (``GET /v1/rows``, the page's controls).
"""
