"""agents/demo_agent.py with its liveness on beats: the baseline of ``bench.liveness``.

    python -m bench.liveness_agent --ticket T --name N [demo_agent knobs]

The same program as ``python -m agents.demo_agent`` (same knobs, same exit codes), except
that every session it opens is ``AgentSession(..., lease=False)``: no lease host, one
``heartbeat`` signal every interval, as agents that cannot run a Temporal worker do. The
local-process runtime runs it like the demo agent (``command()``).
"""

from __future__ import annotations

from typing import Any

from agent_client.session import AgentSession
from agents import demo_agent


class BeatingSession(AgentSession):
    """An AgentSession that never offers a lease: its liveness rides on beat signals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["lease"] = False
        super().__init__(*args, **kwargs)


def command(*knobs: str) -> list[str]:
    """The spec ``command`` that runs this program (as ``demo_agent.command``)."""
    return [
        "{python}",
        "-m",
        "bench.liveness_agent",
        "--ticket",
        "{ticket_id}",
        "--name",
        "{agent_name}",
        *knobs,
    ]


if __name__ == "__main__":
    # demo_agent builds its sessions from its module-level name AgentSession.
    setattr(demo_agent, "AgentSession", BeatingSession)  # noqa: B010
    demo_agent._exit(demo_agent.main())
