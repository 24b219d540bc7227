"""Liveness leases: an agent's heartbeats without a history event per beat (DESIGN §15).

A beat signal costs the ticket ~4.5 history events; five agents beating every 5 s wrote 2,807
events per agent-hour. An activity's heartbeats write none. So each agent process runs one
:class:`LeaseHost`: a Temporal worker on a task queue of its own (``unstuck-lease/<host>/
<pid>/<random>``) with one activity, ``hold_lease``. An :class:`~agent_client.session.
AgentSession` names that queue in its beats; the ticket then schedules a lease for the agent
on it, with a heartbeat timeout of one running deadline, and the host heartbeats the lease
for as long as the session beats. While it holds the lease the session sends beats only when
its status changes. When the process dies the heartbeats stop, the server times the lease
out after one deadline and the ticket's ladder takes over from the last heartbeat: a dead
agent is found as early as with beats.

A lease ends as ``released`` when the session stops beating or closes, as ``refused`` when
the host does not know the agent (its process was restarted), and when the ticket cancels it
(it continues as new, the agent is restarted or left). The session then beats again, which
offers the queue again. Agents that cannot run a worker (the plain ``temporal`` CLI) simply
keep beating: the ticket watches them as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta
from typing import ClassVar, Protocol

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from models.runtime import HOLD_LEASE_ACTIVITY, LEASE_QUEUE_PREFIX

log = logging.getLogger("unstuck.agent.lease")

#: How often a held lease checks that its session still beats (the SDK sends the activity's
#: heartbeats to the server at most every 0.8 x the heartbeat timeout).
CHECK_EVERY_S = 1.0
#: Leases one process may hold at once (one per session).
MAX_LEASES = 1000


class LeaseHolder(Protocol):
    """What a lease host needs of a session (AgentSession implements it)."""

    ticket_id: str
    agent_id: str | None

    @property
    def heartbeating(self) -> bool: ...

    def lease_taken(self) -> None: ...

    def lease_lost(self) -> None: ...


def lease_queue_name() -> str:
    """A task queue no other process uses: ``unstuck-lease/<host>/<pid>/<random>``."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:60]
    return f"{LEASE_QUEUE_PREFIX}{host or 'host'}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


class LeaseHost:
    """One worker per client and process that holds its sessions' leases."""

    _hosts: ClassVar[dict[int, LeaseHost]] = {}

    def __init__(self, client: Client) -> None:
        self.client = client
        self.queue = lease_queue_name()
        self.holders: dict[tuple[str, str], LeaseHolder] = {}
        self._worker: Worker | None = None
        self._run: asyncio.Task[None] | None = None

    # ---- sessions join and leave -----------------------------------------------------

    @classmethod
    async def join(cls, client: Client, holder: LeaseHolder) -> LeaseHost | None:
        """The host for ``client`` in this process, started if need be; None when a worker
        cannot run here (the session then keeps beating)."""
        if holder.agent_id is None:
            return None
        host = cls._hosts.get(id(client))
        if host is None or host.client is not client or host._run is None or host._run.done():
            host = cls(client)
            try:
                host._start()
            except Exception as exc:  # no worker here: beats still carry the liveness
                log.warning("no lease host (beats carry liveness instead): %s", exc)
                return None
            cls._hosts[id(client)] = host
        host.holders[(holder.ticket_id, holder.agent_id)] = holder
        return host

    async def leave(self, holder: LeaseHolder) -> None:
        """The session stopped beating: forget it; stop the worker when none is left."""
        if holder.agent_id is not None:
            self.holders.pop((holder.ticket_id, holder.agent_id), None)
        if not self.holders and self._hosts.get(id(self.client)) is self:
            del self._hosts[id(self.client)]
            await self.stop()

    def _start(self) -> None:
        self._worker = Worker(
            self.client,
            task_queue=self.queue,
            activities=[self.hold_lease],
            max_concurrent_activities=MAX_LEASES,
            graceful_shutdown_timeout=timedelta(0),
            identity=f"lease-host {self.queue.removeprefix(LEASE_QUEUE_PREFIX)}",
        )
        self._run = asyncio.create_task(self._worker.run(), name=f"lease host {self.queue}")

    async def stop(self) -> None:
        if self._worker is None or self._run is None:
            return
        if not self._run.done():
            with contextlib.suppress(Exception):
                await self._worker.shutdown()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._run

    # ---- the activity ------------------------------------------------------------------

    @activity.defn(name=HOLD_LEASE_ACTIVITY)
    async def hold_lease(self, ticket_id: str, agent_id: str) -> str:
        """Heartbeat while the agent's session beats; the ticket reads its timeout."""
        holder = self.holders.get((ticket_id, agent_id))
        if holder is None or not holder.heartbeating:
            raise ApplicationError(
                f"agent {agent_id} of ticket {ticket_id} does not run in this process "
                f"({self.queue})",
                type="LeaseUnknownAgent",
                non_retryable=True,
            )
        holder.lease_taken()
        try:
            while holder.heartbeating and self.holders.get((ticket_id, agent_id)) is holder:
                activity.heartbeat()
                await asyncio.sleep(CHECK_EVERY_S)
            return "released"
        finally:
            holder.lease_lost()
