"""A coding CLI as a ticket's agent: one CLI run per task (the ``command`` runtime).

    UNSTUCK_AGENT_SPEC='{"name": "claude", "runtime": "command", "command": [...]}' \\
        python -m agents.command_agent --ticket login-1 --name claude

The worker starts this process for each agent with ``runtime: command`` (runtimes/command.py)
and hands it the agent spec (``UNSTUCK_AGENT_SPEC``), the join secret and the connection.
It registers, heartbeats while it lives, and loops:

1. claim a task (the ticket's rules: dependencies, priority, fairness);
2. render the prompt: the ticket, the task, and the review feedback of an earlier iteration;
3. run the spec's ``command`` in its ``cwd`` with ``timeout_s`` (placeholders ``{prompt}``,
   ``{task_id}``, ``{task_title}``, ``{ticket_id}``, ``{agent_name}``, ``{workdir}``; without
   ``{prompt}`` the prompt goes to stdin), its output streamed as progress notes;
4. on exit 0: complete the task with the CLI's final message (Claude Code stream-json's
   ``result``, Codex's last ``agent_message``, else all of stdout); a ``submission`` task
   submits it as the ticket's result first. Otherwise: fail the task with the exit code (or
   the timeout) and the tail of stderr. A CLI that outlives ``timeout_s`` is killed, with
   every process it started.

Interrupts and stop requests from the ticket end the current run the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_client.session import AgentSession, Refused, TicketClosed
from infra.client import connect
from infra.settings import Settings
from models.messages import TaskView, encoded_size
from models.spec import RESULT_TYPES, AgentSpec, TicketSpec
from runtimes.command import SPEC_ENV
from runtimes.local_process import format_command

log = logging.getLogger("unstuck.command_agent")

#: At most one progress note this often (each note is a signal in the ticket's history).
NOTE_EVERY_S = 5.0
NOTE_CHARS = 300
STDERR_TAIL_BYTES = 2_000
#: A longer line of output is read in pieces (a final JSON result line may be long).
MAX_LINE_BYTES = 8 << 20
#: What a plain-text CLI's output keeps in memory for its result (cut to 100 KB later).
MAX_TEXT_CHARS = 2_000_000
#: How long a killed CLI gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
IDLE_S = 2.0
#: What the result keeps of a CLI's answer: the task's limit, less room for the marker.
TRUNCATED = "\n\n…(truncated: the whole output is in the agent's log)"


# ---- what a CLI prints ---------------------------------------------------------------------


@dataclass
class CliOutput:
    """Reads a CLI's stdout line by line: progress notes, then the final message or error."""

    format: str
    final: str | None = None
    error: str | None = None
    _text: list[str] = field(default_factory=list)
    _size: int = 0

    def feed(self, line: str) -> str | None:
        """Take one line of stdout; the progress note it is worth, if any."""
        line = line.rstrip("\n")
        if self.format == "text":
            if self._size < MAX_TEXT_CHARS:  # the result is cut far below this anyway
                self._text.append(line[: MAX_TEXT_CHARS - self._size])
                self._size += len(line) + 1
            return line.strip() or None
        try:
            event = json.loads(line)
        except ValueError:
            return line.strip() or None  # a line of plain text among the JSON
        if not isinstance(event, dict):
            return None
        if self.format == "claude-stream-json":
            return self._claude(event)
        return self._codex(event)

    def _claude(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        if kind == "assistant":
            notes = []
            for block in (event.get("message") or {}).get("content") or []:
                if block.get("type") == "text" and block.get("text"):
                    notes.append(str(block["text"]))
                elif block.get("type") == "tool_use":
                    notes.append(f"tool {block.get('name', '?')}")
            return " · ".join(notes) or None
        if kind == "result":
            if event.get("is_error") or event.get("subtype") != "success":
                errors = event.get("errors") or [event.get("result") or ""]
                detail = "; ".join(str(e) for e in errors if e)
                self.error = f"{event.get('subtype', 'error')}" + (f": {detail}" if detail else "")
            else:
                self.final = str(event.get("result") or "")
        return None

    def _codex(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        item = event.get("item") or {}
        item_type = item.get("type") or item.get("item_type")
        if kind == "item.completed" and item_type in ("agent_message", "assistant_message"):
            self.final = str(item.get("text") or "")
            return self.final
        if kind == "item.started" and item_type == "command_execution":
            return f"running: {item.get('command', '?')}"
        if kind == "item.completed" and item_type == "file_change":
            return "changed files"
        if kind == "turn.failed":
            self.error = str((event.get("error") or {}).get("message") or "turn failed")
        elif kind == "error":
            self.error = str(event.get("message") or "error")
        return None

    def result(self) -> str | None:
        """The final message (text: all of stdout); None when the CLI gave none."""
        if self.format == "text":
            text = "\n".join(self._text).strip()
            return text or None
        return self.final if self.final and self.final.strip() else None


# ---- running a CLI -------------------------------------------------------------------------


@dataclass
class Run:
    """How one CLI run ended."""

    exit_code: int | None
    timed_out: bool
    result: str | None
    error: str | None
    stderr_tail: str
    seconds: float
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.cancelled
            and self.error is None
            and bool(self.result)
        )

    def failure(self, timeout_s: float) -> str:
        """Why the task failed, for its failure reason."""
        if self.timed_out:
            why = f"timed out after {timeout_s:g} s; the CLI was killed"
        elif self.cancelled:
            why = "the run was stopped (the agent is stopping, or the task was taken back)"
        elif self.exit_code is None:
            why = self.error or "the CLI could not be started"
        elif self.exit_code != 0:
            why = f"the CLI exited with code {self.exit_code}"
        elif self.error is not None:
            why = f"the CLI reported an error: {self.error}"
        else:
            why = "the CLI exited 0 but gave no final message"
        tail = self.stderr_tail.strip()
        return why + (f"; stderr tail:\n{tail}" if tail else "")


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines, however long: one over :data:`MAX_LINE_BYTES` comes in pieces
    (a StreamReader's own line reading gives up on a long line, and the CLI would then block
    on a full pipe until its timeout)."""
    buffer = b""
    while chunk := await stream.read(1 << 16):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            yield buffer[: end + 1]
            buffer = buffer[end + 1 :]
        if len(buffer) > MAX_LINE_BYTES:
            yield buffer
            buffer = b""
    if buffer:
        yield buffer


def cli_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the CLI runs with: the agent's environment without Unstuck's own settings and
    secrets (the join secret, codec keys, API keys: the agent speaks to the ticket, not the
    CLI, and a prompt-injected CLI must not get them), plus the spec's ``env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSTUCK_")}
    return {**env, **(extra or {})}


async def run_cli(
    argv: list[str],
    *,
    stdin_text: str | None,
    cwd: Path | None,
    timeout_s: float,
    output: str,
    on_note: Callable[[str], Awaitable[None]],
    cancelled: asyncio.Event | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the CLI; its notes go to ``on_note``; killed (with its children) at the timeout
    or when ``cancelled`` is set. ``env``: its environment (default: :func:`cli_environment`)."""
    if env is None:
        env = cli_environment()
    started = time.monotonic()
    parser = CliOutput(output)
    stderr: deque[bytes] = deque()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if stdin_text is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches its children
            env=env,
        )
    except OSError as exc:
        return Run(None, False, None, f"cannot start {argv[0]!r}: {exc.strerror}", "", 0.0)

    async def feed_stdin() -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write((stdin_text or "").encode("utf-8"))
            await process.stdin.drain()
            process.stdin.close()

    async def read_stdout() -> None:
        assert process.stdout is not None
        async for raw in _lines(process.stdout):
            line = raw.decode("utf-8", "replace")
            print(line, end="", flush=True)  # the whole output goes to the agent's log
            try:  # nothing a line holds may stop the reading (the CLI would block on the pipe)
                note = parser.feed(line)
                if note:
                    await on_note(note)
            except Exception as exc:
                log.warning("could not use a line of output: %s", exc)

    async def read_stderr() -> None:
        assert process.stderr is not None
        size = 0
        async for raw in _lines(process.stderr):
            sys.stderr.write(raw.decode("utf-8", "replace"))
            stderr.append(raw)
            size += len(raw)
            while size > STDERR_TAIL_BYTES and len(stderr) > 1:
                size -= len(stderr.popleft())

    readers = [asyncio.create_task(read_stdout()), asyncio.create_task(read_stderr())]
    if stdin_text is not None:
        readers.append(asyncio.create_task(feed_stdin()))
    waiter = asyncio.create_task(process.wait())
    watched = [waiter]
    stop = asyncio.create_task(cancelled.wait()) if cancelled is not None else None
    if stop is not None:
        watched.append(stop)
    done, _ = await asyncio.wait(watched, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finished = waiter in done
    stopped = not finished and stop is not None and stop in done
    if not finished:
        await _kill_group(process.pid, waiter)
    if stop is not None:
        stop.cancel()
    # What the CLI left running in its group (a background job holding its stdout) goes too.
    _signal_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(waiter), 10)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 5)
    for task in (*readers, waiter):  # a pipe held open by a process that escaped the group
        task.cancel()
    tail = b"".join(stderr).decode("utf-8", "replace")[-STDERR_TAIL_BYTES:]
    return Run(
        exit_code=process.returncode,
        timed_out=not finished and not stopped,
        result=parser.result(),
        error=parser.error,
        stderr_tail=tail,
        seconds=round(time.monotonic() - started, 3),
        cancelled=stopped,
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _kill_group(pgid: int, exited: asyncio.Future[int]) -> None:
    """SIGTERM to the CLI's process group, SIGKILL after the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        _signal_group(pgid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(exited), wait)
            return
        except TimeoutError:
            continue


# ---- the prompt ------------------------------------------------------------------------------


def render_prompt(ticket: TicketSpec, task: TaskView, agent_name: str) -> str:
    """What the CLI is asked: the ticket, the task, and the feedback on an earlier try."""
    lines = [
        f"You are {agent_name}, an agent working on ticket {ticket.id}: {ticket.title}.",
    ]
    if ticket.goal:
        lines.append(f"Goal: {ticket.goal}")
    if ticket.result_criteria:
        lines.append("Result criteria: " + "; ".join(c.description for c in ticket.result_criteria))
    lines += [
        "",
        f"Your task, {task.id} ({task.phase} phase, {task.type}): {task.title}",
    ]
    if task.description:
        lines += ["", task.description]
    phase = next((p for p in ticket.phases if p.name == task.phase), None)
    if phase is not None and phase.done_definitions:
        lines += ["", f"The {phase.name} phase is done when:"]
        lines += [f"- {d}" for d in phase.done_definitions]
    if task.last_feedback:
        lines += [
            "",
            "A reviewer rejected your previous attempt at this task:",
            task.last_feedback,
            "Address that feedback.",
        ]
    if task.type == "submission":
        lines += ["", "Your final message is submitted as the ticket's result (markdown)."]
    else:
        lines += ["", "When you are done, reply with the result as markdown: what you did, how."]
    return "\n".join(lines) + "\n"


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes as JSON, marked when cut."""
    if encoded_size(text) <= limit:
        return text
    room = limit - encoded_size(TRUNCATED)
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        if encoded_size(text[:mid]) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + TRUNCATED


# ---- the agent -----------------------------------------------------------------------------


class CommandAgent:
    def __init__(self, session: AgentSession, spec: AgentSpec, ticket: TicketSpec) -> None:
        self.session = session
        self.spec = spec
        self.ticket = ticket
        self.workdir = Path(spec.cwd) if spec.cwd else Path.cwd()
        self._last_note = ""
        self._noted_at = 0.0
        self._pending: str | None = None
        #: Set by SIGTERM/SIGINT: the current CLI is killed, the agent leaves.
        self.shutdown = asyncio.Event()

    async def run(self) -> None:
        agent = self.session
        while not agent.stop_requested.is_set() and not self.shutdown.is_set():
            task = await agent.claim()
            if task is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.shutdown.wait(), IDLE_S)
                continue
            await self.work(task)

    async def work(self, task: TaskView) -> None:
        agent = self.session
        prompt = render_prompt(self.ticket, task, self.spec.name)
        values = {
            "prompt": prompt,
            "task_id": task.id,
            "task_title": task.title,
            "ticket_id": self.ticket.id,
            "agent_name": self.spec.name,
            "workdir": str(self.workdir),
        }
        template = self.spec.command or []
        argv = format_command(template, values)
        via_stdin = not any("{prompt}" in part for part in template)
        log.info("running %s for %s %r", argv[0], task.id, task.title)
        await agent.progress(task.id, f"running {Path(argv[0]).name} on {task.title!r}")
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(task.id, stop))
        try:
            run = await run_cli(
                argv,
                stdin_text=prompt if via_stdin else None,
                cwd=self.workdir,
                timeout_s=self.spec.timeout_s,
                output=self.spec.output,
                on_note=lambda note: self._note(task.id, note),
                cancelled=stop,
                env=cli_environment(self.spec.env),
            )
        finally:
            watcher.cancel()
        await self._flush_note(task.id)
        if agent.interrupted(task.id) or agent.stop_requested.is_set() or self.shutdown.is_set():
            log.warning("%s was taken back (interrupt or stop) during the run", task.id)
            return
        log.info(
            "%s: exit %s after %.1f s%s",
            task.id,
            run.exit_code,
            run.seconds,
            " (timed out)" if run.timed_out else "",
        )
        if not run.ok:
            with contextlib.suppress(Refused):  # e.g. taken back meanwhile: not ours to fail
                await agent.fail(task.id, fit(run.failure(self.spec.timeout_s), 4_000))
            return
        assert run.result is not None
        result = run.result
        try:
            if task.type == "submission":
                limit = self.ticket.policy.results.max_content_bytes
                reply = await agent.submit_result(fit(result, limit))
                result = f"Submitted the CLI's answer as the ticket's result v{reply.version}."
            limit = self.ticket.policy.tasks.max_result_bytes
            await agent.complete(
                task.id, fit(result, limit), RESULT_TYPES.get(task.type, "implementation")
            )
        except Refused as exc:
            # A task must never stay held by an agent that moved on: give it back, saying why
            # (a submission refused because a version awaits its verdict, a task taken back…).
            log.warning("could not report %s: %s", task.id, exc)
            with contextlib.suppress(Refused):
                await agent.fail(task.id, fit(f"the result was refused: {exc}", 4_000))

    async def _watch(self, task_id: str, stop: asyncio.Event) -> None:
        """Stop the run when the ticket interrupts this task or stops the agent, or when the
        agent's own process is told to stop (SIGTERM: a restart, the ticket's end)."""
        while not stop.is_set():
            if (
                self.session.stop_requested.is_set()
                or self.session.interrupted(task_id)
                or self.shutdown.is_set()
            ):
                stop.set()
                return
            await asyncio.sleep(0.2)

    async def _note(self, task_id: str, note: str) -> None:
        """A progress note, at most one per NOTE_EVERY_S; the latest held back is kept for
        :meth:`_flush_note`."""
        note = " ".join(note.split())[:NOTE_CHARS]
        if not note or note == self._last_note:
            return
        if time.monotonic() - self._noted_at < NOTE_EVERY_S:
            self._pending = note
            return
        await self._send_note(task_id, note)

    async def _flush_note(self, task_id: str) -> None:
        if self._pending is not None and self._pending != self._last_note:
            await self._send_note(task_id, self._pending)
        self._pending = None

    async def _send_note(self, task_id: str, note: str) -> None:
        self._last_note, self._noted_at, self._pending = note, time.monotonic(), None
        try:
            await self.session.progress(task_id, note)
        except (Refused, TicketClosed) as exc:
            log.info("progress note not taken: %s", exc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m agents.command_agent", description=__doc__)
    p.add_argument("--ticket", default=env.get("UNSTUCK_TICKET_ID"), help="ticket id")
    p.add_argument("--name", default=env.get("UNSTUCK_AGENT_NAME"), help="agent name")
    p.add_argument("--kind", default=env.get("UNSTUCK_AGENT_KIND") or "worker")
    p.add_argument("--spec", default=env.get(SPEC_ENV), help=f"agent spec as JSON ({SPEC_ENV})")
    args = p.parse_args(argv)
    if not args.ticket or not args.name or not args.spec:
        p.error("--ticket, --name and --spec (or their UNSTUCK_* variables) are required")
    return args


async def main_async(args: argparse.Namespace) -> int:
    spec = AgentSpec.model_validate_json(args.spec)
    client = await connect(Settings.from_env())
    session = AgentSession(client, args.ticket, name=args.name, kind=args.kind)
    try:
        async with session:
            ticket = await session.handle.query("spec", result_type=TicketSpec)
            agent = CommandAgent(session, spec, ticket)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):  # stop: the CLI goes first
                loop.add_signal_handler(sig, agent.shutdown.set)
            await agent.run()
    except TicketClosed:
        log.info("the ticket finished")
    except Refused as exc:
        log.error("refused: %s", exc)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
