"""The model's serving side: what the service and the events path run of the nightly model.

* ``user_encoder``: the exported TorchScript user tower, registered per model version;
* ``ranker``: the learned ranker's features and scoring (trained by ``ingest.embedding.ranker_training``);
* ``ties``: how events of one timestamp are ordered (the ETL, evaluation and the stream agree).
"""
