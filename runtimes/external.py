"""The ``external`` runtime: someone else runs the agents.

Unstuck cannot start, signal or see these processes. Spawning records that the agent is
expected (no pid); stopping cannot act, so a restart of an external agent means: its tasks
go back to pending, it is told to restart itself through its next reply (inbox), and the
ticket escalates if it does not come back. ``is_alive`` is always None (unknown): only the
agent's heartbeats say whether it lives.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from models.runtime import AgentProcess, RuntimeName, SpawnAgent, StopOutcome
from runtimes.base import ProgressCallback

EXTERNAL_STOP_DETAIL = "external agent: asked to restart itself via its next reply"


class ExternalRuntime:
    """Agents run elsewhere; every call is a no-op that says so."""

    name: RuntimeName = "external"

    async def spawn(self, request: SpawnAgent) -> AgentProcess:
        return AgentProcess(
            agent_name=request.spec.name,
            runtime="external",
            ticket_id=request.ticket_id,
            generation=request.generation,
            pid=None,
            pgid=None,
            started_at=datetime.now(UTC),
            command=[],
            host=socket.gethostname(),
        )

    async def stop(
        self,
        process: AgentProcess,
        grace_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> StopOutcome:
        return StopOutcome(
            stopped=False,
            graceful=False,
            forced=False,
            was_alive=False,
            detail=EXTERNAL_STOP_DETAIL,
        )

    async def is_alive(self, process: AgentProcess) -> bool | None:
        return None
