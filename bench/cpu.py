"""CPU accounting from the operating system's counters (issue 24, item 3).

Every figure here is CPU time, user + system, in **milliseconds**, read from the kernel (through
psutil's ``/proc/<pid>/stat``) or from Elasticsearch's node stats: never wall time, never a
profiler's estimate. A benchmark takes a snapshot before and after a window and divides the delta
by the pages served in it (``per_unit``).

    tree = ProcessCPU([gunicorn_master_pid])      # master + workers, found at each snapshot
    before = tree.snapshot()
    ...                                           # the load window
    used = tree.delta(before, tree.snapshot())    # CPUDelta: cpu_ms, user_ms, system_ms, wall_s
    per_page = per_unit(used.cpu_ms, pages)

Process trees: the roots and all their descendants (by parent pid, ``psutil.Process.children(
recursive=True)``) are read at each snapshot. A process that starts inside the window counts from
zero; one that ends inside the window counts through its parent's reaped-children times
(``children_user`` / ``children_system``, the kernel's ``RUSAGE_CHILDREN``), so a gunicorn worker
recycled by the master during the window is neither lost nor counted twice. What cannot be seen:
CPU of a descendant that ends and is reaped by a process outside the tree (e.g. re-parented to
init), and CPU of a root that itself exits inside the window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import psutil


@dataclass(frozen=True)
class ProcTimes:
    """One process's cumulative CPU seconds at a snapshot: its own (``user``, ``system``) and its
    terminated, waited-for descendants' (``children_user``, ``children_system``)."""

    user: float
    system: float
    children_user: float = 0.0
    children_system: float = 0.0


@dataclass(frozen=True)
class CPUSnapshot:
    """The tree at one instant: ``procs`` maps (pid, create_time) to its ``ProcTimes``; ``at`` is
    ``time.monotonic()`` seconds."""

    at: float
    procs: dict[tuple[int, float], ProcTimes]


@dataclass(frozen=True)
class CPUDelta:
    """CPU used by a process tree between two snapshots: ``cpu_ms`` = ``user_ms`` + ``system_ms``
    (milliseconds of CPU, summed over every process and thread of the tree, so it can exceed the
    window's wall time on several cores); ``wall_s`` the window's wall seconds; ``processes`` how
    many distinct processes were seen in either snapshot; ``started`` / ``ended`` how many appeared
    / disappeared inside the window."""

    cpu_ms: float
    user_ms: float
    system_ms: float
    wall_s: float
    processes: int
    started: int = 0
    ended: int = 0

    @property
    def cores(self) -> float:
        """Average cores busy over the window (``cpu_ms / 1000 / wall_s``)."""
        return self.cpu_ms / 1000.0 / self.wall_s if self.wall_s > 0 else float("nan")


class ProcessCPU:
    """CPU of one or more process trees from the OS counters.

    ``roots``: pids or ``psutil.Process`` objects (e.g. the gunicorn master, or a node's JVM).
    ``include_children``: also every descendant at snapshot time and the reaped-children times
    (see the module docstring); without it, only the roots' own threads.
    """

    def __init__(self, roots: Iterable[int | psutil.Process], include_children: bool = True):
        self.roots = [r if isinstance(r, psutil.Process) else psutil.Process(int(r)) for r in roots]
        if not self.roots:
            raise ValueError("ProcessCPU needs at least one root process")
        self.include_children = include_children

    def _members(self) -> list[psutil.Process]:
        seen: dict[int, psutil.Process] = {}
        for root in self.roots:
            procs = [root]
            if self.include_children:
                try:
                    procs += root.children(recursive=True)
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass
            for proc in procs:
                seen.setdefault(proc.pid, proc)
        return list(seen.values())

    def snapshot(self) -> CPUSnapshot:
        """Read every member's cumulative CPU times now. Processes that vanish while being read
        are left out (they are then counted as ended, through their parent)."""
        procs: dict[tuple[int, float], ProcTimes] = {}
        for proc in self._members():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if self.include_children:
                procs[key] = ProcTimes(times.user, times.system, times.children_user, times.children_system)
            else:
                procs[key] = ProcTimes(times.user, times.system)
        return CPUSnapshot(at=time.monotonic(), procs=procs)

    @staticmethod
    def delta(start: CPUSnapshot, end: CPUSnapshot) -> CPUDelta:
        """CPU used between ``start`` and ``end``: for each process, (own + reaped children) at
        ``end`` minus the same at ``start`` (zero at ``start`` for a process that appeared, zero
        at ``end`` for one that ended: its final times are in its parent's reaped-children
        times)."""
        user = system = 0.0
        for key, t in end.procs.items():
            s = start.procs.get(key, ProcTimes(0.0, 0.0))
            user += (t.user + t.children_user) - (s.user + s.children_user)
            system += (t.system + t.children_system) - (s.system + s.children_system)
        ended = [key for key in start.procs if key not in end.procs]
        for key in ended:
            s = start.procs[key]
            user -= s.user + s.children_user
            system -= s.system + s.children_system
        # an ended process reaped outside the tree would drive this below zero: never report that
        user, system = max(user, 0.0), max(system, 0.0)
        return CPUDelta(cpu_ms=(user + system) * 1000.0, user_ms=user * 1000.0, system_ms=system * 1000.0,
                        wall_s=end.at - start.at, processes=len(set(start.procs) | set(end.procs)),
                        started=sum(1 for key in end.procs if key not in start.procs), ended=len(ended))


def per_unit(delta_ms: float, units: float) -> float:
    """``delta_ms / units`` (e.g. CPU ms per homepage); NaN when no units were served."""
    return delta_ms / units if units else float("nan")


# --------------------------------------------------------------------------------------------
# Elasticsearch
# --------------------------------------------------------------------------------------------

def _nodes_process(es: Any) -> dict[str, dict]:
    response = es.nodes.stats(metric="process")
    body = response.body if hasattr(response, "body") else response
    return body.get("nodes", {})


def es_node_cpu_ms(es: Any) -> float:
    """Cumulative CPU milliseconds of the cluster's JVMs: the sum over nodes of node stats'
    ``process.cpu.total_in_millis`` (``GET _nodes/stats/process``), the whole JVM (search, GC,
    JIT, merges, everything), user + system.

    Elasticsearch caches these process stats and refreshes them about once a second
    (``monitor.process.refresh_interval``, 1 s by default), so a reading can be up to a second old:
    only deltas over windows of many seconds mean anything (an error of up to ~1 s of one core per
    end). A node running on this machine is read from its pid instead (``es_process_cpu``)."""
    return float(sum(node.get("process", {}).get("cpu", {}).get("total_in_millis", 0)
                     for node in _nodes_process(es).values()))


def _port_of(address: str | None) -> int | None:
    """The port of a node's ``publish_address`` (``127.0.0.1:9200``, ``host/127.0.0.1:9200``, ``[::1]:9200``)."""
    if not address or ":" not in address:
        return None
    try:
        return int(address.rsplit(":", 1)[1])
    except ValueError:
        return None


def _listens_on(pid: int, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def local_node_pids(es: Any) -> list[int] | None:
    """The pids of the cluster's nodes when every node runs on this machine, found from the nodes' own
    report (``GET _nodes/process,http``: each node's ``process.id`` and HTTP publish port) and
    confirmed here: the process of that pid listens on that port. None when any node is elsewhere (a
    remote cluster, a container with its own pid space) or cannot be confirmed: whatever home, data
    directory or launcher started the node."""
    response = es.nodes.info(metric="process,http")
    body = response.body if hasattr(response, "body") else response
    pids = []
    for node in body.get("nodes", {}).values():
        pid = int(node.get("process", {}).get("id", -1))
        port = _port_of(node.get("http", {}).get("publish_address"))
        if pid <= 0 or port is None or not psutil.pid_exists(pid) or not _listens_on(pid, port):
            return None
        pids.append(pid)
    return sorted(pids) or None


@dataclass
class ESCPUReading:
    """A cumulative CPU reading of the cluster's JVMs: ``cpu_ms`` (milliseconds, user + system,
    summed over nodes); ``source`` says how it was read: ``"pid"`` (the kernel's counters of the
    nodes' processes, exact at the instant) or ``"node_stats"`` (``_nodes/stats/process``, refreshed
    about once a second: never good enough for a short window such as one row's searches)."""

    cpu_ms: float
    source: str
    pids: list[int] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.source == "pid"


def es_process_cpu(es: Any, pids: list[int] | None = None) -> ESCPUReading:
    """The cluster's cumulative JVM CPU: from the nodes' pids (``pids``, or those ``local_node_pids``
    finds) when the nodes run here, else from node stats. Take deltas of readings of one source."""
    pids = pids if pids is not None else local_node_pids(es)
    if pids:
        total = 0.0
        for pid in pids:
            t = psutil.Process(pid).cpu_times()
            total += (t.user + t.system) * 1000.0
        return ESCPUReading(cpu_ms=total, source="pid", pids=list(pids))
    return ESCPUReading(cpu_ms=es_node_cpu_ms(es), source="node_stats")
