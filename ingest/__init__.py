"""The nightly pipeline. Two jobs, one package each:

- ingest.embedding: compute embeddings (data, Spark ETL, model, training, evaluation, export);
- ingest.indexing: publish them (templates, generations, bulk load, validation, lock, alias swap).

ingest.pipeline runs the steps of both in order; ingest.dag_tasks wraps them for Airflow."""
