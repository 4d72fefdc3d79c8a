"""gunicorn settings, from the environment. `gunicorn -c python:app.gunicorn_conf app.wsgi:application`

Each worker imports app.wsgi itself (no preload), so each has its own Elasticsearch client.
"""

import os

bind = os.environ.get("FACETREC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("FACETREC_WORKERS", "2"))
threads = int(os.environ.get("FACETREC_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("FACETREC_WORKER_TIMEOUT_S", "30"))
graceful_timeout = int(os.environ.get("FACETREC_GRACEFUL_TIMEOUT_S", "20"))
keepalive = int(os.environ.get("FACETREC_KEEPALIVE_S", "5"))
accesslog = None  # the app writes its own structured access log
errorlog = "-"
loglevel = os.environ.get("FACETREC_LOG_LEVEL", "info")
