"""Open-loop HTTP load (issue 24, item 3): requests leave at the offered rate whatever the server
does, so a slow server shows as latency and errors, not as a lower offered rate.

    result = run_load_auto([url_1, url_2, ...], rps=50, duration_s=60)
    result.achieved_rps, result.p95_ms, result.errors_by_status, result.loadgen_cpu_s

``run_load`` drives vegeta (Go, `github.com/tsenart/vegeta`, pinned ``VEGETA_VERSION``), a separate
process that costs little CPU; its CPU is read from the kernel when it exits (``os.wait4``'s
rusage of that child: user + system of all its threads during the attack). ``run_load_python`` is
the fallback when vegeta cannot be had (threads + urllib inside this process; it costs much more
CPU per request, opens a connection per request, and its CPU is the generator threads' own
``RUSAGE_THREAD`` times). ``run_load_auto`` picks vegeta and falls back, saying why in
``LoadResult.fallback_reason``.

Both parse every request's result and compute the figures the same way (``summarize``): latencies
are a request's wall milliseconds from when it was sent to when its response was read; percentiles
are ``numpy.percentile`` (linear) over the successful (2xx) requests. Targets cycle over the given
URLs in order (GET).
"""

from __future__ import annotations

import csv
import io
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.13.0"
BIN_DIR = Path.home() / ".cache" / "facetrec" / "bin"
GO_PLACES = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")  # where Go lives when it is not on PATH


class LoadgenUnavailable(RuntimeError):
    """The requested load generator cannot be had here; the message says what is missing."""


@dataclass
class LoadResult:
    """One open-loop run.

    ``generator``: ``"vegeta"`` or ``"python"``. ``offered_rps``: the rate asked for (requests per
    second); ``duration_s``: the attack's planned seconds. ``requests``: requests sent;
    ``sent_rps``: requests / the window they were sent in (close to ``offered_rps`` when the
    generator kept up). ``successes``: 2xx responses; ``achieved_rps``: successes / the run's
    window (from the first send to the last response, at least ``duration_s``).
    ``p50_ms`` .. ``max_ms``: latency percentiles of successful requests, milliseconds (NaN when
    none succeeded). ``errors``: non-2xx responses plus transport errors (timeouts, refused
    connections); ``errors_by_status``: count per HTTP status, transport errors under 0;
    ``error_samples``: the most common error messages with their counts. ``send_lag_p99_ms`` /
    ``send_lag_max_ms``: how late requests left against their schedule (a generator that falls
    behind is no longer open loop). ``latencies_ms``: every successful request's latency (for a CDF).
    ``loadgen_cpu_s`` = ``loadgen_user_s`` + ``loadgen_system_s``: the generator's own CPU seconds
    over the attack, from the OS. ``wall_s``: wall seconds of the whole run.
    """

    generator: str
    offered_rps: float
    duration_s: float
    requests: int
    sent_rps: float
    successes: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    errors_by_status: dict[int, int]
    error_samples: dict[str, int]
    send_lag_p99_ms: float
    send_lag_max_ms: float
    loadgen_cpu_s: float
    loadgen_user_s: float
    loadgen_system_s: float
    wall_s: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    fallback_reason: str | None = None

    @property
    def loadgen_cpu_ms_per_request(self) -> float:
        """The generator's CPU milliseconds per request sent."""
        return self.loadgen_cpu_s * 1000.0 / self.requests if self.requests else float("nan")

    def to_dict(self, latencies: bool = False) -> dict:
        """JSON-ready; the latency list only when asked (it is long)."""
        out = asdict(self)
        out["errors_by_status"] = {str(k): v for k, v in self.errors_by_status.items()}
        out["loadgen_cpu_ms_per_request"] = self.loadgen_cpu_ms_per_request
        if not latencies:
            out.pop("latencies_ms")
        return out


@dataclass(frozen=True)
class Hit:
    """One request: ``sent`` (epoch seconds), ``latency_s``, HTTP ``status`` (0: transport error),
    ``error`` ('' when none), ``seq`` (its place in the schedule)."""

    seq: int
    sent: float
    latency_s: float
    status: int
    error: str


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def summarize(hits: list[Hit], *, generator: str, rps: float, duration_s: float, cpu_user_s: float,
              cpu_system_s: float, wall_s: float) -> LoadResult:
    """The figures of ``LoadResult`` from per-request results (the same for every generator)."""
    hits = sorted(hits, key=lambda h: h.seq)
    ok = [h for h in hits if 200 <= h.status < 300 and not h.error]
    latencies = np.array([h.latency_s * 1000.0 for h in ok], dtype=np.float64)
    bad = [h for h in hits if not (200 <= h.status < 300 and not h.error)]
    if hits:
        first = min(h.sent for h in hits)
        last_sent = max(h.sent for h in hits)
        last_done = max(h.sent + h.latency_s for h in hits)
        lag = np.array([(h.sent - first) - h.seq / rps for h in hits]) * 1000.0 if rps > 0 else np.zeros(0)
        lag -= lag.min() if lag.size else 0.0  # the first request defines the schedule's origin
        # n requests on schedule span (n - 1) intervals of 1 / rps
        sent_rps = ((len(hits) - 1) / (last_sent - first) if len(hits) > 1 and last_sent > first
                    else len(hits) / max(duration_s, 1e-9))
        run_window = max(last_done - first, duration_s)
    else:
        lag, sent_rps, run_window = np.zeros(0), 0.0, duration_s
    samples = Counter(h.error[:160] for h in bad if h.error)
    return LoadResult(
        generator=generator, offered_rps=float(rps), duration_s=float(duration_s), requests=len(hits),
        sent_rps=sent_rps, successes=len(ok), achieved_rps=len(ok) / run_window if run_window > 0 else 0.0,
        p50_ms=_pct(latencies, 50), p95_ms=_pct(latencies, 95), p99_ms=_pct(latencies, 99),
        max_ms=float(latencies.max()) if latencies.size else float("nan"),
        errors=len(bad), errors_by_status=dict(sorted(Counter(h.status for h in bad).items())),
        error_samples=dict(samples.most_common(5)),
        send_lag_p99_ms=_pct(lag, 99), send_lag_max_ms=float(lag.max()) if lag.size else float("nan"),
        loadgen_cpu_s=cpu_user_s + cpu_system_s, loadgen_user_s=cpu_user_s, loadgen_system_s=cpu_system_s,
        wall_s=wall_s, latencies_ms=latencies.tolist())


# --------------------------------------------------------------------------------------------
# vegeta
# --------------------------------------------------------------------------------------------

def ensure_vegeta(bin_dir: Path | None = None) -> Path:
    """The vegeta binary in ``bin_dir`` (``~/.cache/facetrec/bin``); when absent, builds it there
    with ``GOBIN=<bin_dir> go install github.com/tsenart/vegeta/v12@v12.13.0`` (minutes, needs Go
    and its module proxy). ``LoadgenUnavailable`` names what is missing."""
    bin_dir = Path(bin_dir or BIN_DIR)
    binary = bin_dir / "vegeta"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go") or next((p for p in GO_PLACES if os.access(p, os.X_OK)), None)
    if go is None:
        raise LoadgenUnavailable(
            f"vegeta is not at {binary} and Go is not installed (no `go` on PATH or in /usr/local/go/bin): "
            f"install Go, or put a vegeta {VEGETA_VERSION} binary at {binary}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    cmd = [go, "install", f"{VEGETA_MODULE}@{VEGETA_VERSION}"]
    try:
        proc = subprocess.run(cmd, env={**os.environ, "GOBIN": str(bin_dir)}, capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise LoadgenUnavailable(f"`GOBIN={bin_dir} {' '.join(cmd)}` did not finish in 900 s") from exc
    if proc.returncode != 0 or not binary.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LoadgenUnavailable(f"`GOBIN={bin_dir} {' '.join(cmd)}` failed (rc {proc.returncode}): "
                                 + " | ".join(tail))
    return binary


def _rate_arg(rps: float) -> str:
    """vegeta's ``-rate`` is an integer count per duration: 12.5 rps -> ``12500/1000s``."""
    if rps <= 0:
        raise ValueError("rps must be positive (vegeta's rate 0 means 'as fast as possible', not open loop)")
    return f"{int(rps)}/1s" if float(rps).is_integer() else f"{round(rps * 1000)}/1000s"


def _parse_vegeta_csv(text: str) -> list[Hit]:
    """``vegeta encode --to csv`` rows: timestamp ns, code, latency ns, bytes out, bytes in, error,
    body (base64), attack, seq, method, url, headers (base64)."""
    hits = []
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        hits.append(Hit(seq=int(row[8]), sent=int(row[0]) / 1e9, latency_s=int(row[2]) / 1e9,
                        status=int(row[1]), error=row[5]))
    return hits


def run_load(urls: list[str], rps: float, duration_s: float, timeout_s: float = 5, workers: int = 10,
             max_workers: int | None = None, vegeta: Path | None = None) -> LoadResult:
    """An open-loop GET attack with vegeta at ``rps`` for ``duration_s`` over ``urls`` (cycled in
    order): ``vegeta attack -rate R -duration D -timeout T -workers W [-max-workers M] -max-body 0
    -keepalive`` writing its binary results to a file, then ``vegeta encode --to csv`` of that
    file. ``workers`` is vegeta's initial worker count; it adds workers when all are busy (up to
    ``max_workers``, unlimited by default), which is what keeps the rate open loop. The
    generator's CPU (``loadgen_cpu_s``) is the attack process's rusage (user + system) from
    ``os.wait4``; the encode step afterwards is not counted."""
    if not urls:
        raise ValueError("run_load needs at least one URL")
    binary = vegeta or ensure_vegeta()
    with tempfile.TemporaryDirectory(prefix="facetrec-vegeta-") as tmp:
        targets, results, log = Path(tmp, "targets.txt"), Path(tmp, "results.bin"), Path(tmp, "attack.log")
        targets.write_text("".join(f"GET {url}\n\n" for url in urls))
        cmd = [str(binary), "attack", f"-targets={targets}", f"-rate={_rate_arg(rps)}",
               f"-duration={int(round(duration_s * 1000))}ms", f"-timeout={int(round(timeout_s * 1000))}ms",
               f"-workers={workers}", "-max-body=0", "-keepalive=true", f"-output={results}"]
        if max_workers is not None:
            cmd.append(f"-max-workers={max_workers}")
        started = time.monotonic()
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        # a watchdog in case vegeta hangs past the attack and its last timeouts
        watchdog = threading.Timer(duration_s + timeout_s + 60, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: leave no attack running behind us
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"vegeta attack failed (rc {proc.returncode}): {log.read_text(errors='replace')[-800:]}")
        encoded = subprocess.run([str(binary), "encode", "--to", "csv", str(results)], capture_output=True,
                                 text=True, check=True, timeout=300)
    return summarize(_parse_vegeta_csv(encoded.stdout), generator="vegeta", rps=rps, duration_s=duration_s,
                     cpu_user_s=usage.ru_utime, cpu_system_s=usage.ru_stime, wall_s=wall)


# --------------------------------------------------------------------------------------------
# pure-Python fallback
# --------------------------------------------------------------------------------------------

def _thread_cpu() -> tuple[float, float]:
    """This thread's (user, system) CPU seconds: ``RUSAGE_THREAD`` (Linux), else ``thread_time``."""
    if hasattr(resource, "RUSAGE_THREAD"):
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        return usage.ru_utime, usage.ru_stime
    return time.thread_time(), 0.0


def run_load_python(urls: list[str], rps: float, duration_s: float, timeout_s: float = 5,
                    workers: int = 256) -> LoadResult:
    """The same open-loop attack from threads in this process (the fallback when vegeta cannot be
    had). A scheduler thread releases request ``i`` at ``start + i / rps`` (not when an earlier
    one returns) to a pool of up to ``workers`` threads, each doing one ``urllib`` GET (a new
    connection per request, no keep-alive). If every worker is busy a request leaves late: see
    ``send_lag_*``. The generator's CPU is the scheduler's and the workers' own CPU while they
    generate load (``RUSAGE_THREAD`` deltas around each request), so other threads of this
    process (e.g. a server under test) are not counted; Python's per-request cost is far higher
    than vegeta's."""
    if not urls:
        raise ValueError("run_load_python needs at least one URL")
    if rps <= 0:
        raise ValueError("rps must be positive")
    n = max(int(round(rps * duration_s)), 1)
    hits: list[Hit] = []
    cpu = [0.0, 0.0]
    lock = threading.Lock()

    def one(seq: int, url: str) -> None:
        u0, s0 = _thread_cpu()
        sent = time.time()
        t0 = time.perf_counter()
        status, error = 0, ""
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.read()
            exc.close()
            error = f"{exc.code} {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - any transport failure is an error of the run
            error = f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - t0
        u1, s1 = _thread_cpu()
        with lock:
            hits.append(Hit(seq=seq, sent=sent, latency_s=latency, status=status, error=error))
            cpu[0] += u1 - u0
            cpu[1] += s1 - s0

    started = time.monotonic()
    u0, s0 = _thread_cpu()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loadgen") as pool:
        origin = time.perf_counter()
        for i in range(n):
            delay = origin + i / rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, urls[i % len(urls)])
        u1, s1 = _thread_cpu()
    wall = time.monotonic() - started
    return summarize(hits, generator="python", rps=rps, duration_s=duration_s,
                     cpu_user_s=cpu[0] + (u1 - u0), cpu_system_s=cpu[1] + (s1 - s0), wall_s=wall)


def run_load_auto(urls: list[str], rps: float, duration_s: float, timeout_s: float = 5,
                  workers: int | None = None) -> LoadResult:
    """``run_load`` (vegeta) when the binary can be had, else ``run_load_python``, with the
    reason in ``fallback_reason``. ``workers``: vegeta's initial workers (default 10) or the
    Python pool's size (default 256)."""
    try:
        binary = ensure_vegeta()
    except LoadgenUnavailable as exc:
        result = run_load_python(urls, rps, duration_s, timeout_s, workers or 256)
        result.fallback_reason = str(exc)
        return result
    return run_load(urls, rps, duration_s, timeout_s, workers or 10, vegeta=binary)
