"""``python -m bench``: every benchmark, then bench/RESULTS.md (see bench/run_all.py)."""

from bench.run_all import main

raise SystemExit(main())
