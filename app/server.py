"""Run the service as a gunicorn process (the demo and the serving benchmark use this)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from facetrec.settings import PACKAGE_ROOT  # gunicorn imports the app from here first (a checkout or site-packages)


def start_gunicorn(env_overrides: dict[str, str], bind: str, log_path: Path | None = None,
                   ready_timeout_s: float = 60.0) -> subprocess.Popen:
    """Start `gunicorn -c python:app.gunicorn_conf app.wsgi:application` in its own session and wait until
    /readyz answers 200. Raises RuntimeError (naming the log) if it exits or never gets ready."""
    env = {**os.environ, **env_overrides, "FACETREC_BIND": bind}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app.wsgi:application"],
                                cwd=PACKAGE_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        if log_path:
            out.close()
    where = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {proc.returncode}{where}")
        try:
            with urllib.request.urlopen(f"http://{bind}/readyz", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the service at {bind} was not ready after {ready_timeout_s:.0f}s{where}")
