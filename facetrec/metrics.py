"""DogStatsD metrics for the service and the pipeline (disabled cleanly when no agent is set)."""

from __future__ import annotations

from typing import Protocol, Sequence

from facetrec.settings import Settings


class Metrics(Protocol):
    """What the service and the pipeline send metrics through (DogStatsD, or nothing)."""

    def timing(self, name: str, value_ms: float, tags: Sequence[str] = ()) -> None: ...

    def increment(self, name: str, tags: Sequence[str] = (), value: int = 1) -> None: ...

    def gauge(self, name: str, value: float, tags: Sequence[str] = ()) -> None: ...

    def distribution(self, name: str, value: float, tags: Sequence[str] = ()) -> None: ...


class NoMetrics:
    """Used when DD_AGENT_HOST is unset: every call is a no-op."""

    def timing(self, name: str, value_ms: float, tags: Sequence[str] = ()) -> None:
        pass

    def increment(self, name: str, tags: Sequence[str] = (), value: int = 1) -> None:
        pass

    def gauge(self, name: str, value: float, tags: Sequence[str] = ()) -> None:
        pass

    def distribution(self, name: str, value: float, tags: Sequence[str] = ()) -> None:
        pass


class StatsdMetrics(NoMetrics):
    def __init__(self, host: str, port: int, namespace: str, constant_tags: Sequence[str] = ()):
        from datadog.dogstatsd import DogStatsd

        self.client = DogStatsd(host=host, port=port, namespace=namespace, constant_tags=list(constant_tags),
                                disable_telemetry=True)

    def timing(self, name, value_ms, tags=()):
        self.client.timing(name, value_ms, tags=list(tags))

    def increment(self, name, tags=(), value=1):
        self.client.increment(name, value, tags=list(tags))

    def gauge(self, name, value, tags=()):
        self.client.gauge(name, value, tags=list(tags))

    def distribution(self, name, value, tags=()):
        self.client.distribution(name, value, tags=list(tags))

    def flush(self) -> None:
        self.client.flush()


def make_metrics(settings: Settings, component: str) -> Metrics:
    if not settings.statsd_host:
        return NoMetrics()
    return StatsdMetrics(settings.statsd_host, settings.statsd_port, settings.metrics_namespace,
                         constant_tags=[f"component:{component}"])


class TaggedMetrics:
    """Another metrics object with ``tags`` added to everything sent through it (an experiment arm's)."""

    def __init__(self, inner: Metrics, tags: Sequence[str]):
        self.inner, self.tags = inner, list(tags)

    def timing(self, name, value_ms, tags=()):
        self.inner.timing(name, value_ms, [*tags, *self.tags])

    def increment(self, name, tags=(), value=1):
        self.inner.increment(name, [*tags, *self.tags], value)

    def gauge(self, name, value, tags=()):
        self.inner.gauge(name, value, [*tags, *self.tags])

    def distribution(self, name, value, tags=()):
        self.inner.distribution(name, value, [*tags, *self.tags])
