"""The ``command`` runtime: a coding CLI (Claude Code, Codex, Aider, a script) as an agent.

The agent's ``command`` is run once per task. The worker starts, per agent, one local process
``python -m agents.command_agent`` (everything of :mod:`runtimes.local_process` holds: its
own process group, the log file, idempotent spawns, stop with a grace period, restarts); that
process registers with the ticket, heartbeats, claims, renders the task into the command,
runs it with the spec's ``timeout_s`` in the spec's ``cwd``, streams its output as progress
notes and completes the task with the CLI's final message, or fails it with the exit code
and the tail of stderr (agents/command_agent.py).

The agent spec travels to that process as JSON in ``UNSTUCK_AGENT_SPEC``.
"""

from __future__ import annotations

from models.runtime import AgentProcess, RuntimeName, SpawnAgent
from runtimes.base import SpawnConfigError
from runtimes.local_process import LocalProcessRuntime

SPEC_ENV = "UNSTUCK_AGENT_SPEC"


class CommandRuntime(LocalProcessRuntime):
    """Runs each agent's CLI through the command agent, as a local process."""

    name: RuntimeName = "command"

    async def spawn(self, request: SpawnAgent) -> AgentProcess:
        spec = request.spec
        if spec.runtime != "command" or not spec.command:
            raise SpawnConfigError(
                f"agent {spec.name!r}: runtime {spec.runtime!r} is not a command to run per task"
            )
        driver = spec.model_copy(
            update={
                "runtime": "local-process",
                "command": [
                    "{python}",
                    "-m",
                    "agents.command_agent",
                    "--ticket",
                    "{ticket_id}",
                    "--name",
                    "{agent_name}",
                    "--kind",
                    spec.kind,
                ],
                "env": {**spec.env, SPEC_ENV: spec.model_dump_json()},
            }
        )
        process = await super().spawn(request.model_copy(update={"spec": driver}))
        return process.model_copy(update={"runtime": self.name})
