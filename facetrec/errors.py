"""The one error family: every error facetrec raises on purpose is a :class:`FacetrecError` of one of
the few kinds its callers handle differently.

==================== ======================================================= ===============================
kind                 what it means                                           the service / the command line
==================== ======================================================= ===============================
``BadRequest``       a caller's input is wrong; ``field`` names it           400 with the field
``Conflict``         the input contradicts what is already recorded          409 with the field
``Unavailable``      a dependency cannot serve now (the cluster, a missing   503 + ``Retry-After``; the
                     index, an encoder); trying again later may work         command line says "try again"
``ConfigurationError`` a setting, a config or schema file, or an input file  refused at start; one sentence
                     an operator must fix                                    naming the setting or file
``Refused``          an operation stopped to protect what is live (a lock,  one sentence; the aliases and
                     a validation gate, a pair that is not green)            live indices are untouched
==================== ======================================================= ===============================

Each message is a sentence for a person. An ``Unavailable`` also carries ``code`` and ``public``: the
stable error code and the message a caller of the API may see (the detail goes to the log only).
"""

from __future__ import annotations


class FacetrecError(Exception):
    """Base of every error facetrec raises on purpose."""


class BadRequest(FacetrecError, ValueError):
    """A caller's input is invalid. ``field`` names the offending input (``rows[0].filter.categories``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(FacetrecError):
    """The input contradicts what is already recorded (a batch id reused with other events)."""

    code = "conflict"
    field: str | None = None


class Unavailable(FacetrecError, RuntimeError):
    """Something this call needs cannot serve right now; retrying later may work."""

    code = "unavailable"
    public = "the recommendation index is unreachable; retry shortly"
    log_event = "es_unavailable"   # the service's log line for it


class ClusterUnavailable(Unavailable):
    """Elasticsearch could not be reached, did not answer in time, or is overloaded."""


class ConfigurationError(FacetrecError, ValueError):
    """A setting, a configuration or schema file, or an input an operator must fix; the message names it."""


class Refused(FacetrecError, RuntimeError):
    """An operation stopped before it could change what is live (the lock, a gate, an unusable pair)."""
