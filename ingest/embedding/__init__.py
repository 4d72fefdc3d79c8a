"""The embedding side of the nightly job: data sets, Spark ETL, the two-tower model, training,
evaluation and the export of item/user embeddings (+ the TorchScript user encoder).

Nothing here talks to Elasticsearch: its output is files that ingest.indexing publishes."""
