"""Agent runtimes: how Unstuck starts, stops and watches agents (DESIGN §6).

``runtime_for("local-process")`` runs each agent as a local command in its own process
group; ``runtime_for("external")`` is for agents someone else runs. Both implement
:class:`AgentRuntime`.
"""

from runtimes.base import (
    DEFAULT_LOG_DIR,
    AgentExitedEarly,
    AgentRuntime,
    AgentRuntimeError,
    ProgressCallback,
    SpawnConfigError,
    runtime_for,
)

__all__ = [
    "DEFAULT_LOG_DIR",
    "AgentExitedEarly",
    "AgentRuntime",
    "AgentRuntimeError",
    "ProgressCallback",
    "SpawnConfigError",
    "runtime_for",
]
