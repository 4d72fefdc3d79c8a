"""The nightly pipeline. Two jobs, one package each:

- ingest.embedding: compute embeddings (data, Spark ETL, model, training, evaluation, export);
- ingest.indexing: publish them (templates, generations, bulk load, validation, lock, alias swap);
- ingest.experiments: experiment arms (candidate pairs behind their own aliases) and their readout;
- ingest.streaming: the Spark Structured Streaming job that applies event files to user vectors.

ingest.pipeline runs the steps of both in order; ingest.dag_tasks wraps them for Airflow."""
