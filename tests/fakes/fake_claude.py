"""A stand-in for ``claude -p PROMPT --output-format stream-json --verbose`` (no network).

Prints Claude Code's stream-json lines (system init, assistant text and tool_use, the user
tool_result, the final result) for the prompt it is given, and appends the prompt to
``$FAKE_CLI_PROMPTS`` (one JSON string per line) so tests can read what it was asked.

Knobs (environment): FAKE_CLI_HANG=1 sleeps forever after its first line (and starts a child
that sleeps too: a kill must reach it); FAKE_CLI_EXIT=N exits N after printing to stderr;
FAKE_CLI_ERROR=1 ends with an error result (subtype error_during_execution).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid


def emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    args = sys.argv[1:]
    prompt = args[args.index("-p") + 1] if "-p" in args else sys.stdin.read()
    if path := os.environ.get("FAKE_CLI_PROMPTS"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(prompt) + "\n")
    session = str(uuid.uuid4())
    emit(
        {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": session,
            "tools": ["Bash", "Read", "Edit"],
            "model": "claude-sonnet-4-5",
        }
    )
    if os.environ.get("FAKE_CLI_HANG"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"CHILD_PID {child.pid}", file=sys.stderr, flush=True)
        time.sleep(3600)
    if code := int(os.environ.get("FAKE_CLI_EXIT", "0")):
        print("fatal: could not read the repository", file=sys.stderr, flush=True)
        return code
    title = next((line for line in prompt.splitlines() if line.startswith("Your task")), "?")
    emit(
        {
            "type": "assistant",
            "session_id": session,
            "message": {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"Working on it: {title}"},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Bash",
                        "input": {"command": "ls"},
                    },
                ],
                "stop_reason": "tool_use",
            },
        }
    )
    emit(
        {
            "type": "user",
            "session_id": session,
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": "README.md",
                        "is_error": False,
                    }
                ],
            },
        }
    )
    if os.environ.get("FAKE_CLI_ERROR"):
        emit(
            {
                "type": "result",
                "subtype": "error_during_execution",
                "is_error": True,
                "session_id": session,
                "errors": ["the model API returned 529 overloaded"],
            }
        )
        return 1
    addressed = "\n\nAddressed the review feedback." if "A reviewer rejected" in prompt else ""
    emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 1200,
            "num_turns": 2,
            "session_id": session,
            "total_cost_usd": 0.0,
            "result": f"## Done\n\n{title}: implemented and tested.{addressed}",
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
