"""A real Elasticsearch on this machine: ``node`` starts, stops and inspects a local node (or a
3-node cluster) built from Maven Central artifacts (``elasticsearch_local/``: the launcher, the
``GET /`` plugin and the ``facetrec_vector`` script plugin); ``process`` holds the process helpers it,
the Spark cluster launcher and the re-index lock share."""
