"""The raw ceiling: the cheapest workflow that answers updates, for comparison with a ticket.

``BenchCeiling`` does nothing but count: every ``bump`` update increments a counter and
returns it; ``finish`` ends the run. It is measured on the same server, client, data
converter and worker process as the ticket, so the ratio ticket/ceiling isolates what the
ticket workflow itself costs per update (state machine, replies, search attributes, ledger
activities, history events).

Kept free of project imports so the workflow sandbox loads it quickly.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

CEILING_WORKFLOW = "BenchCeiling"


class Bump(BaseModel):
    """A small plain-JSON payload, roughly the size of an agent's claim message."""

    caller: str
    request_id: str
    seq: int


@workflow.defn(name=CEILING_WORKFLOW)
class CeilingWorkflow:
    def __init__(self) -> None:
        self._count = 0
        self._finished = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._finished)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._count

    @workflow.update(name="bump")
    async def bump(self, msg: Bump) -> int:
        self._count += 1
        return self._count

    @workflow.update(name="finish")
    async def finish(self) -> int:
        self._finished = True
        return self._count

    @workflow.query(name="count")
    def count(self) -> int:
        return self._count
