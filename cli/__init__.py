"""The operator command line: ``python starter.py ...``, installed as ``unstuck``.

One module per command group, each registering its commands with ``add_commands``:

- ``cli.tickets``: launch, list, status, timeline, diagnoses, result, cancel, watch, diagnose,
  release (the functions behind them, e.g. ``launch_ticket``, and the commands)
- ``cli.admin``: join-secret, schema
- ``cli.demo``: demo (``run_demo``)
- ``cli.serve``: worker, mcp, codec-server

and what they share:

- ``cli.common``: ``StarterError``, connecting, queries and operator updates, operator tokens,
  ``Context``, the connection flags and argument types
- ``cli.render``: the Rich tables and the live view
- ``cli.main``: the parser and the entry points (``run``, ``main``, ``cli``); it says how to
  add a command group

``starter.py`` is the script and re-exports the names scripts and tests use (``starter.run``,
``starter.launch_ticket``, ...).
"""
