"""bench/run_all.py: RESULTS.md rendered from report dicts shaped like the benches' JSON."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench.run_all import BENCHES, Outcome, judged_misses, parse_args, render_results


def _summary(**values: float) -> dict[str, Any]:
    return {"n": 40, **values}


def lifecycle_report(ratio: float = 0.62, per_round: tuple[float, ...] = (0.6, 0.64)) -> dict:
    phase = {
        "seconds": 10.0,
        "updates": 1000,
        "updates_per_s": 100.0,
        "update_latency": {"p50_ms": 30.0, "p95_ms": 70.0, "max_ms": 90.0},
        "python_cpu_ms_per_update": 4.0,
        "server_cpu_ms_per_update": 6.5,
    }
    ceiling = {
        **phase,
        "updates_per_s": 160.0,
        "python_cpu_ms_per_update": 2.7,
        "server_cpu_ms_per_update": 4.3,
    }
    return {
        "config": {
            "tickets": 8,
            "tasks_per_ticket": 100,
            "agents_per_ticket": 4,
            "rounds": 2,
            "heartbeats": "off (health deadlines set to 1 day)",
        },
        "ours": {
            **phase,
            "lifecycles": 800,
            "lifecycles_per_s": 80.0,
            "tickets": 8,
            "tickets_completed": 8,
            "tasks_done": 800,
        },
        "ceiling": {**ceiling, "equivalent_lifecycles_per_s": 128.0, "events_per_update": 5.1},
        "ratios": {
            "ratio_updates": ratio,
            "ratio_updates_pooled": ratio,
            "ratio_strict": ratio * 0.9,
            "ratio_updates_per_round": list(per_round),
            "ratio_cpu": 0.66,
        },
        "rounds": [
            {"order": "ours→ceiling", "ours": phase, "ceiling": ceiling, "ratio_updates": x}
            for x in per_round
        ],
        "history": {
            "events_total": 6400,
            "events_in_working_phase": 6000,
            "events_per_lifecycle": 8.0,
            "events_per_lifecycle_working": 7.5,
            "by_source_all_tickets": {"workflow tasks": {"count": 3000, "per_lifecycle": 3.75}},
        },
        "problems": [],
        "targets": {
            "throughput_vs_ceiling": {"target": ">= 50%", "value": ratio, "pass": ratio >= 0.5},
            "events_per_lifecycle": {"target": "<= 10", "value": 8.0, "pass": True},
        },
    }


def detection_report(p99: float = 0.08, pickup_p99: float = 0.03) -> dict:
    return {
        "config": {
            "tickets_per_cohort": 40,
            "tasks_per_ticket": 3,
            "window_s": 3.0,
            "cooldown_s": 3.0,
            "spread_s": 10.0,
            "scan_period_s": 6.0,
            "baseline_period_s": 60.0,
            "poll_ms": 50,
        },
        "environment": {
            "cpu_during_measurement": {
                "seconds": 30,
                "cpus": 2,
                "cores_this_process": 0.4,
                "cores_dev_server": 0.3,
                "cores_other_processes": 1.1,
                "event_loop_lag_s": _summary(p99=0.2, max=0.3),
            }
        },
        "unstuck": {
            "overshoot_s": _summary(p50=0.03, p90=0.05, p99=p99, max=p99 + 0.01),
            "external_latency_s": _summary(p50=0.09, p90=0.12, p99=0.15, max=0.16),
            "breakdown_s": {
                "arm_lag_s": _summary(p50=0.01, p90=0.02, p99=0.02, max=0.02),
                "timer_late_s": _summary(p50=0.002, p90=0.003, p99=0.003, max=0.003),
                "pickup_s": _summary(p50=0.01, p90=0.02, p99=pickup_p99, max=pickup_p99),
            },
            "not_diagnosed": 0,
            "failed_tickets": 0,
        },
        "baseline": {
            "analytic_P60": {"pooled": {"p50": 30.0, "p90": 54.0, "p99": 59.4, "max": 60.0}},
            "empirical": {"overshoot_s": _summary(p50=3.1, p90=5.5, p99=5.9, max=6.0)},
            "empirical_scaled_P60": {"overshoot_s": _summary(p50=29.0, p99=58.0)},
        },
        "ratios": {
            "analytic_pooled_P60": {"p50": 1000.0, "p99": round(59.4 / p99, 1)},
            "empirical_scaled_P60": {"p50": 966.7, "p99": round(58.0 / p99, 1)},
        },
        "targets": {
            "unstuck_overshoot_p99": {"target": "<= 1 s", "value": p99, "pass": p99 <= 1.0},
        },
    }


def heartbeat_report() -> dict:
    checks = {
        "agents_registered": 10,
        "agents_expected": 10,
        "heartbeats_counted": 2880,
        "beats_sent": 2880,
        "heartbeat_counts_equal_beats_sent": True,
        "last_seq_equal_beats_sent": True,
        "intact": True,
    }
    return {
        "config": {
            "agents_per_ticket": 10,
            "simulated_hours": 24.0,
            "beat_every_s": 300.0,
            "idle_deadline_s": 600.0,
            "continue_as_new_after_events": 2000,
            "scaled_cadence_note": "scaled cadence",
        },
        "heartbeats": {
            "total": 2880,
            "per_agent": 288,
            "events_per_heartbeat": 5.3,
            "signal_part_per_heartbeat": 4.0,
            "timer_part_per_heartbeat": 1.2,
            "events_per_agent_hour_at_5s_naive": 3816.0,
            "events_per_agent_hour_at_5s_refined": 2952.0,
            "signals_per_signal_workflow_task": 1.0,
        },
        "tickets": {
            "bounded": {
                "runs": 8,
                "run_lengths": [2004] * 7 + [900],
                "max_run_length": 2004,
                "bound": 2020,
                "events_total": 14928,
                "state_checks": checks,
            }
        },
        "targets": {
            "bounded": {
                "target": "max events of one run <= 2000 + 20",
                "value": 2004,
                "pass": True,
            },
            "state_intact": {"target": "agents registered", "value": True, "pass": True},
        },
    }


def reassignment_report(deadline: float = 2.0, worst: float = 0.03, last_short: int = 0) -> dict:
    floor = 3 * deadline
    return {
        "config": {
            "runs": 40,
            "concurrency": 8,
            "running_deadline_s": deadline,
            "floor_s": floor,
            "poll_ms": 50,
            "process_runs": 0,
        },
        "environment": {},
        "latency_s": _summary(p50=floor + 0.01, p99=floor + worst, max=floor + worst),
        "overshoot_s": _summary(p50=0.01, p99=worst, max=worst),
        "external_latency_s": _summary(p50=floor + 0.08, p99=floor + 0.1, max=floor + 0.1),
        "external_overshoot_s": _summary(p50=0.08, p99=1.2, max=1.2),
        "ladder_late_s": {"agent_unresponsive": _summary(p50=0.01, p99=worst, max=worst)},
        "breakdown_s": {"timer_late_s": _summary(p50=0.002, p99=worst, max=worst)},
        "short_timers": {
            "runs_with_a_ladder_timer_under_0.9s": 40,
            "runs_whose_last_timer_was_under_0.9s": last_short,
            "runs_with_breakdown": 40,
        },
        "failed_runs": 0,
        "process_runs": [],
        "targets": {
            "overshoot_max": {"target": "<= 1 s", "value": worst, "pass": worst <= 1.0},
            "external_overshoot_max": {
                "target": "<= 1 s (informational)",
                "value": 1.2,
                "pass": False,
            },
            "process_overshoot_max": None,
        },
    }


def memory_report(per_ticket_1000: int = 354_000) -> dict:
    def at(n: int, per: int) -> dict[str, Any]:
        return {
            "open_tickets": n,
            "rss_bytes": 122_000_000 + n * per,
            "pss_bytes": 100_000_000 + n * per,
            "uss_bytes": 90_000_000 + n * per,
            "sticky_cache_size": n,
            "forced_evictions": 0,
            "query_pass": {"open": n, "queried": n},
            "cache_hits_during_query_pass": n,
            "cache_misses_during_query_pass": 0,
        }

    per = {
        "100": {"open_tickets": 100, "rss_bytes": 168_000_000, "delta_rss_bytes": 46_000_000,
                "rss_bytes_per_ticket": 460_000, "pss_bytes_per_ticket": 460_000,
                "uss_bytes_per_ticket": 460_000},
        "1000": {"open_tickets": 1000, "rss_bytes": 122_000_000 + 1000 * per_ticket_1000,
                 "delta_rss_bytes": 1000 * per_ticket_1000, "rss_bytes_per_ticket": per_ticket_1000,
                 "pss_bytes_per_ticket": per_ticket_1000, "uss_bytes_per_ticket": per_ticket_1000},
    }  # fmt: skip
    return {
        "config": {"spec": "examples/login.yaml", "workflow_cache_limit": 1000},
        "figures": {
            "baseline_rss_bytes": 122_000_000,
            "per_open_ticket": per,
            "marginal_rss_bytes_per_ticket": {"100->1000": 342_000},
            "slope_rss_bytes_per_ticket": 350_000,
            "all_resident": True,
        },
        "at_counts": {"100": at(100, 460_000), "1000": at(1000, per_ticket_1000)},
        "steps": [{"open_tickets": 0, "rss_bytes": 122_000_000}],
        "one_ticket": {"state_json_bytes": 28_000, "history_events": 72},
        "tickets": {"tasks_held": 1000},
        "timing": {},
        "problems": [],
        "targets": {
            f"rss_per_open_ticket_at_{k}": {
                "target": "<= 1 MB",
                "value": v["rss_bytes_per_ticket"] / 1e6,
                "pass": v["rss_bytes_per_ticket"] <= 1_000_000,
            }
            for k, v in per.items()
        },
    }


META = {
    "quick": False,
    "command": "python -m bench",
    "started_utc": "2026-01-01 00:00:00",
    "finished_utc": "2026-01-01 00:12:00",
    "wall_s": 720.0,
    "load_before": [0.1, 0.2, 0.3],
    "load_after": [1.9, 1.2, 0.8],
    "machine": {"cpu_model": "Test CPU 9000", "cores": 2, "memory_gib": 23.5, "kernel": "6.1"},
    "versions": {"python": "3.11.7", "temporalio": "1.35.0"},
    "git": {"head": "0123456789abcdef", "subject": "s", "dirty": True, "dirty_paths": ["a.py"]},
}


def outcome(name: str, report: dict | None, error: str | None = None) -> Outcome:
    return Outcome(name, [], Path(f"bench/out/{name}.json"), 12.0, report=report, error=error)


def all_ok() -> list[Outcome]:
    return [
        outcome("lifecycle", lifecycle_report()),
        outcome("detection", detection_report()),
        outcome("heartbeat_history", heartbeat_report()),
        outcome("reassignment", reassignment_report()),
        outcome("memory", memory_report()),
    ]


def summary_rows(md: str) -> dict[str, list[str]]:
    """The summary table: figure → its cells."""
    block = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| figure"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def misses_section(md: str) -> str:
    return md.split("## Misses and why", 1)[1]


def test_header_summary_and_sections_from_the_reports() -> None:
    md = render_results(META, all_ok())
    assert "SMOKE" not in md
    assert "Test CPU 9000, 2 cores, 23.5 GiB RAM" in md
    assert "before [0.1, 0.2, 0.3], after [1.9, 1.2, 0.8]" in md
    assert "temporalio 1.35.0" in md and "0123456789ab" in md and "dirty tree" in md
    rows = summary_rows(md)
    throughput = rows["Lifecycle throughput ÷ raw Temporal update ceiling (same server, same run)"]
    assert throughput[:3] == ["62.0 %", ">= 50%", "PASS"]
    assert "60 % / 64 %" in throughput[3]  # the per-round ratios
    assert rows["Stuck-detection overshoot p99 (the ticket's own timer)"][:3] == [
        "80 ms",
        "<= 1 s",
        "PASS",
    ]
    assert rows["Polling baseline, a scan every 60 s (same run)"][0] == "p50 30.0 s, p99 59.4 s"
    assert rows["History events per agent-hour of heartbeats (5 s interval)"][0] == "2952"
    assert rows["Worker memory per open ticket, 1000 open"][:3] == ["354 kB", "<= 1 MB", "PASS"]
    assert rows["Worker memory, marginal per ticket 100→1000"][0] == "342 kB"
    over = rows["Agent death → reassignment: overshoot over the floor (every run)"]
    assert over[:3] == ["0.030 s", "<= 1 s", "PASS"]
    assert "floor 6 s (3 × 2 s running deadline)" in over[3]
    # the informational external figure missed: listed, tagged, not judged
    assert "(informational)" in misses_section(md)
    assert judged_misses(all_ok()) == []
    for name in ("lifecycle", "detection", "heartbeat_history", "reassignment", "memory"):
        assert f"## {name}: " in md and f"`bench/out/{name}.json`" in md


def test_quick_run_is_marked_as_a_smoke_run() -> None:
    md = render_results({**META, "quick": True, "command": "python -m bench --quick"}, all_ok())
    assert md.startswith("# Benchmark results — SMOKE RUN (`--quick`)")
    assert "**not** results" in md


def test_misses_say_why_from_the_data() -> None:
    outcomes = all_ok()
    outcomes[0] = outcome("lifecycle", lifecycle_report(ratio=0.41, per_round=(0.38, 0.45)))
    outcomes[1] = outcome("detection", detection_report(p99=1.6, pickup_p99=1.45))
    outcomes[3] = outcome(
        "reassignment", reassignment_report(deadline=1.0, worst=1.08, last_short=9)
    )
    outcomes[4] = outcome("memory", memory_report(per_ticket_1000=1_250_000))
    md = render_results(META, outcomes)
    rows = summary_rows(md)
    assert rows["Stuck-detection overshoot p99 (the ticket's own timer)"][2] == "**MISS**"
    misses = misses_section(md)
    assert "Every target was met" not in misses
    # lifecycle: the measured ratios and the CPU comparison
    assert "measured 41.0 %, target >= 50%" in misses
    assert "per-round ratios 38 % / 45 %" in misses
    assert "ours 10.50 ms" in misses and "vs ceiling 7.00 ms" in misses
    # detection: the dominating part, from the breakdown
    assert "worker pick-up 1450 ms" in misses
    assert "**worker pick-up (TimerFired → WorkflowTaskStarted)** dominates" in misses
    assert "other processes 1.10" in misses
    # reassignment with a 1 s deadline: the server's 1 s timer minimum
    assert "running deadline 1 s; in 9 of 40 runs" in misses
    assert "timerProcessorMaxTimeShift" in misses
    # memory
    assert "measured 1.2 MB, target <= 1 MB" in misses
    assert "The marginal cost (342 kB) is below the per-ticket figure" in misses
    assert "well below what the CPU cost predicts (66 %)" in misses
    assert sorted(judged_misses(outcomes)) == [
        "detection.unstuck_overshoot_p99",
        "lifecycle.throughput_vs_ceiling",
        "memory.rss_per_open_ticket_at_1000",
        "reassignment.overshoot_max",
    ]


def test_reassignment_miss_without_short_timers_names_the_dominating_part() -> None:
    report = reassignment_report(deadline=2.0, worst=1.3, last_short=0)
    md = render_results(META, [outcome("reassignment", report)])
    misses = misses_section(md)
    assert "timerProcessorMaxTimeShift`). With deadlines" not in misses
    assert "**server timer lateness** dominates" in misses


def test_a_failed_bench_is_recorded_and_the_others_still_render() -> None:
    outcomes = all_ok()
    outcomes[2] = outcome("heartbeat_history", None, error="RuntimeError: test server died")
    outcomes[2].trace = "Traceback (most recent call last):\nRuntimeError: test server died\n"
    md = render_results(META, outcomes)
    rows = summary_rows(md)
    assert rows["heartbeat_history: bench failed"] == [
        "—",
        "—",
        "**FAILED**",
        "RuntimeError: test server died",
    ]
    assert "**heartbeat_history** did not run to the end: RuntimeError: test server died" in md
    assert "```\nTraceback (most recent call last):" in md
    assert "Lifecycle throughput" in md and "## memory: " in md


def test_unknown_targets_and_odd_reports_still_show_up() -> None:
    report = copy.deepcopy(memory_report())
    report["targets"]["new_target"] = {"target": "<= 3", "value": 4.5, "pass": False}
    md = render_results(META, [outcome("memory", report), outcome("lifecycle", {"targets": {}})])
    assert summary_rows(md)["new_target"] == ["4.5000", "<= 3", "**MISS**", ""]
    assert "memory — new_target" in md
    assert "could not summarise this report" in md


def test_parse_args_defaults_and_only() -> None:
    quick = parse_args(["--quick", "--only", "memory,lifecycle"])
    assert quick.names == ["lifecycle", "memory"]  # in the benches' order
    assert quick.results == Path("bench/out/RESULTS-quick.md")
    assert quick.out_dir == Path("bench/out/quick")
    full = parse_args([])
    assert full.results == Path("bench/RESULTS.md") and len(full.names) == len(BENCHES) == 9
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


def hostile_report(accepted: list[dict[str, str]] | None = None) -> dict[str, object]:
    wrong = accepted or []
    return {
        "config": {"generated": 2000, "seed": 1},
        "categories": {"impersonation": {"tried": 23, "refused": 23 - len(wrong)}},
        "tried": 23,
        "refused": 23 - len(wrong),
        "wrongly_accepted": wrong,
        "refused_without_a_reason": [],
        "workflow_task_failures": 0,
        "state_unchanged": not wrong,
        "seconds": 2.5,
        "targets": {
            "refused": {
                "target": "every hostile message refused; 0 workflow tasks failed; state unchanged",
                "value": f"{23 - len(wrong)} of 23",
                "pass": not wrong,
            }
        },
    }


def test_hostile_messages_are_counted_beside_the_other_figures() -> None:
    md = render_results(META, [*all_ok(), outcome("hostile", hostile_report())])
    row = summary_rows(md)["Hostile messages from a second client, refused"]
    assert row[:3] == [
        "23 of 23",
        "every hostile message refused; 0 workflow tasks failed; state unchanged",
        "PASS",
    ]
    assert "| impersonation | 23 | 23 |" in md
    wrong = [{"category": "impersonation", "what": "register as validator", "target": "register"}]
    md = render_results(META, [*all_ok(), outcome("hostile", hostile_report(wrong))])
    assert "accepted: impersonation register as validator → register" in misses_section(md)


def anomaly_report(overshoots: tuple[float, ...], ahead: tuple[float, ...]) -> dict[str, Any]:
    runs = [
        {"window_s": 2.0, "detected": True, "latency_s": 2 + o, "overshoot_s": o,
         "signal_on_s": 2 - a, "armed_ahead_s": a, "signature": "agent_looping"}
        for o, a in zip(overshoots, ahead, strict=True)
    ]  # fmt: skip
    worst = max(overshoots)
    return {
        "config": {"windows_s": [2.0], "runs_per_window": len(runs), "note_every_s": 0.25},
        "by_window": {
            "2": {
                "n": len(runs),
                "latency_s": {"p50": 2.02, "p90": 2.03, "max": 2 + worst},
                "overshoot_s": {"max": worst},
                "signatures": ["agent_looping"],
            }
        },
        "runs": runs,
        "not_detected": 0,
        "targets": {"overshoot_max": {"target": "<= 1 s", "value": worst, "pass": worst <= 1}},
    }


def test_anomaly_miss_names_timers_armed_under_the_servers_minimum() -> None:
    md = render_results(META, [outcome("anomaly", anomaly_report((0.02, 0.03), (1.47, 1.45)))])
    assert summary_rows(md)["Loop start → anomaly diagnosis, minus the window (worst run)"][:3] == [
        "0.03 s",
        "<= 1 s",
        "PASS",
    ]
    assert "| 2 s | 2 | 2.02 s | 2.03 s | 2.03 s | 0.03 s | agent_looping |" in md
    md = render_results(META, [outcome("anomaly", anomaly_report((0.02, 1.011), (1.47, 0.01)))])
    misses = misses_section(md)
    assert "window 2 s: max 3.01 s" in misses
    assert "1 run(s) armed the window's timer under 1 s ahead" in misses
