"""Which arm serves a request, and what serving it needs: the arm's target (its aliases), its metrics
(tagged ``arm:<name>``) and its recall monitor (exact answers from the arm's own items)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

from facetrec.errors import BadRequest
from facetrec.experiments import CONTROL, Experiment, ExperimentCache, arm_aliases
from facetrec.metrics import Metrics, TaggedMetrics
from facetrec.serving.homepage import SearchConfig
from facetrec.serving.recall_monitor import RecallMonitor
from facetrec.settings import Settings


@dataclasses.dataclass(frozen=True)
class ArmServing:
    name: str
    target: SearchConfig
    metrics: Metrics
    monitor: RecallMonitor


class Arms:
    """One per process: the experiment's view (``ExperimentCache``) and each arm's serving, made once."""

    def __init__(self, settings: Settings, experiments: ExperimentCache, control: SearchConfig, metrics: Metrics,
                 monitor_for: Callable[[SearchConfig, Metrics], RecallMonitor]):
        self.settings, self.experiments, self.metrics, self.monitor_for = settings, experiments, metrics, monitor_for
        self._control = control
        self._serving: dict[str, ArmServing] = {}
        self._lock = threading.Lock()

    def choose(self, user_id: str, pinned: str | None = None) -> tuple[ArmServing, Experiment | None]:
        """The user's arm in the running experiment (``control`` when none runs), or the pinned one,
        which must be live (a 400 naming ``arm`` otherwise)."""
        experiment = self.experiments.get()
        if pinned is not None:
            live = experiment.arm_names if experiment else [CONTROL]
            if pinned not in live:
                raise BadRequest("arm", f"{pinned!r} is not a live arm; live: {live}")
            name = pinned
        else:
            name = experiment.assign(user_id) if experiment else CONTROL
        return self.serving(name), experiment

    def serving(self, name: str) -> ArmServing:
        found = self._serving.get(name)
        if found is not None:
            return found
        with self._lock:
            if name not in self._serving:
                metrics = TaggedMetrics(self.metrics, [f"arm:{name}"])
                if name == CONTROL:
                    target = self._control
                else:
                    item_alias, user_alias = arm_aliases(self.settings, name)
                    target = dataclasses.replace(self._control, item_index=item_alias, user_index=user_alias)
                self._serving[name] = ArmServing(name, target, metrics, self.monitor_for(target, metrics))
            return self._serving[name]
