"""A Spark standalone cluster on loopback: one master and N workers, each its own JVM, started with
the launcher classes of the installed pyspark (``bin/spark-class`` and Spark's
``org.apache.spark.deploy.master.Master`` / ``...worker.Worker``; nothing is downloaded).

    facetrec spark start [--workers 2] [--cores 1] [--memory 1g]    prints SPARK_MASTER=spark://...
    facetrec spark status
    facetrec spark stop

With ``SPARK_MASTER`` pointing at it, the nightly pipeline's Spark steps run on its executors (the ETL,
and the publish's bulk load, partition by partition), which import the project from the code archive
the driver ships with the job (``ingest.embedding.spark.code_archive``). The cluster is recorded in
``<state root>/spark/cluster.json`` for ``status`` and ``stop``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facetrec.errors import FacetrecError
from facetrec.local.process import process_alive
from facetrec.settings import STATE_ROOT

DEFAULT_HOME = STATE_ROOT / "spark"
STATE_FILE = "cluster.json"


class SparkClusterError(FacetrecError, RuntimeError):
    """Starting the standalone cluster failed; the message says why and where the logs are."""


@dataclass
class SparkCluster:
    master_url: str          # spark://127.0.0.1:<port>: what SPARK_MASTER is set to
    web_url: str             # the master's web UI (its /json/ lists the workers)
    pids: list[int]          # master first, then the workers
    home: str
    logs: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.home) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, home: Path) -> "SparkCluster | None":
        path = Path(home) / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def spark_home() -> Path:
    """The installed pyspark: its jars and ``bin/spark-class`` are a complete Spark."""
    import pyspark

    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").is_file():
        raise SparkClusterError(f"{home} has no bin/spark-class: reinstall pyspark (pip install --force-reinstall pyspark)")
    return home


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(home: Path, name: str, args: list[str]) -> tuple[int, str]:
    log, spark = home / f"{name}.log", spark_home()
    env = {**os.environ, "SPARK_HOME": str(spark), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(home), "SPARK_NO_DAEMONIZE": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(spark / "bin" / "spark-class"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=home)
    return proc.pid, str(log)


def master_state(web_url: str, timeout: float = 2.0) -> dict | None:
    """The master's view of the cluster (``/json/``: status, alive workers, cores), or None if it is not up."""
    try:
        with urllib.request.urlopen(f"{web_url}/json/", timeout=timeout) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start(workers: int = 2, cores: int = 1, memory: str = "1g", home: Path | None = None,
          timeout: float = 120.0, log=print) -> SparkCluster:
    """Start a master and ``workers`` workers on 127.0.0.1 and wait (bounded) until every worker is
    ALIVE at the master. Raises SparkClusterError (naming the logs) otherwise."""
    if workers < 1 or cores < 1:
        raise SparkClusterError(f"--workers and --cores must be at least 1 (got {workers}, {cores})")
    home = Path(home or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    running = SparkCluster.load(home)
    if running and any(process_alive(p) for p in running.pids):
        raise SparkClusterError(f"a Spark cluster from {home} is already running at {running.master_url}: "
                                "run `facetrec spark stop` first")
    port, web_port = _free_port(), _free_port()
    pid, master_log = _launch(home, "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                                "--port", str(port), "--webui-port", str(web_port)])
    cluster = SparkCluster(master_url=f"spark://127.0.0.1:{port}", web_url=f"http://127.0.0.1:{web_port}",
                           pids=[pid], home=str(home), logs=[master_log])
    cluster.save()
    try:
        _wait(cluster, lambda state: state.get("status") == "ALIVE", timeout, "the master")
        for n in range(workers):
            work = home / f"worker-{n}"
            work.mkdir(exist_ok=True)
            pid, worker_log = _launch(home, f"worker-{n}", [
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                "--memory", memory, "--webui-port", "0", "--work-dir", str(work), cluster.master_url])
            cluster.pids.append(pid)
            cluster.logs.append(worker_log)
            cluster.save()
        _wait(cluster, lambda state: state.get("aliveworkers", 0) >= workers, timeout, f"{workers} workers")
    except BaseException:
        stop(home)
        raise
    log(f"facetrec spark: master {cluster.master_url} with {workers} workers x {cores} core(s), {memory} "
        f"(web UI {cluster.web_url}, logs in {home})")
    return cluster


def _wait(cluster: SparkCluster, ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [log for pid, log in zip(cluster.pids, cluster.logs) if not process_alive(pid)]
        if dead:
            raise SparkClusterError(f"a Spark process exited while waiting for {what}: see {dead[0]}")
        state = master_state(cluster.web_url)
        if state is not None and ready(state):
            return
        time.sleep(0.5)
    raise SparkClusterError(f"{what} not ready after {timeout:.0f}s: see {', '.join(cluster.logs)}")


def stop(home: Path | None = None, timeout: float = 30.0) -> int:
    """Stop the recorded cluster (workers first); returns how many processes were running."""
    home = Path(home or DEFAULT_HOME).resolve()
    cluster = SparkCluster.load(home)
    if cluster is None:
        return 0
    alive = [pid for pid in reversed(cluster.pids) if process_alive(pid)]
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGTERM)   # spark-class execs java in its own session: the group is the JVM
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in alive:
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            process_alive(pid)
    (home / STATE_FILE).unlink(missing_ok=True)
    return len(alive)


def status(home: Path | None = None) -> dict:
    cluster = SparkCluster.load(Path(home or DEFAULT_HOME).resolve())
    if cluster is None:
        return {"running": False}
    state = master_state(cluster.web_url) or {}
    return {"running": state.get("status") == "ALIVE", "master_url": cluster.master_url, "web_url": cluster.web_url,
            "alive_workers": state.get("aliveworkers", 0), "cores": state.get("cores", 0)}
