"""Benchmarks of the ticket workflow against the Temporal server (see bench/README.md)."""
