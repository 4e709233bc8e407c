"""The engine's lifecycle as an explicit state machine: NEW -> STARTING -> READY -> DRAINING -> STOPPED, or DEAD."""

from __future__ import annotations

import enum


class EngineState(enum.Enum):
    NEW = "new"  # constructed; nothing loaded, no thread
    STARTING = "starting"  # loop thread loading the model and warming up; requests queue
    READY = "ready"  # serving
    DRAINING = "draining"  # shutdown called: no new requests, in-flight ones finish until the timeout
    STOPPED = "stopped"  # loop joined, cache and model freed
    DEAD = "dead"  # the loop failed: pending requests got EngineDeadError

    @property
    def accepts_requests(self) -> bool:
        return self in (EngineState.STARTING, EngineState.READY)

    @property
    def is_final(self) -> bool:
        return self in (EngineState.STOPPED, EngineState.DEAD)


_ALLOWED = {
    EngineState.NEW: {EngineState.STARTING, EngineState.STOPPED},
    EngineState.STARTING: {EngineState.READY, EngineState.DRAINING, EngineState.DEAD},
    EngineState.READY: {EngineState.DRAINING, EngineState.DEAD},
    EngineState.DRAINING: {EngineState.STOPPED, EngineState.DEAD},
    EngineState.STOPPED: set(),
    EngineState.DEAD: set(),
}


def check_transition(current: EngineState, new: EngineState) -> None:
    """Raise RuntimeError on a transition the machine does not have: a bug in the engine, not a user error."""
    if new not in _ALLOWED[current]:
        raise RuntimeError(f"engine state cannot go from {current.name} to {new.name}")
