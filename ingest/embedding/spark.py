"""The SparkSession the pipeline uses: local[*] here, any master in production (SPARK_MASTER)."""

from __future__ import annotations

import logging
import os
import sys


def make_spark_session(app_name: str = "facetrec", master: str | None = None):
    from pyspark.sql import SparkSession

    # py4j logs its connection chatter at INFO, also from interpreter shutdown, when a host's log
    # handlers (pytest's capture, Airflow's task log) may already be closed: a "Logging error"
    # traceback at the end of every run. Its warnings and errors still come through.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name)
               .master(master or os.environ.get("SPARK_MASTER", "local[2]"))
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "8")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "2g"))
               .config("spark.ui.showConsoleProgress", "false"))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
