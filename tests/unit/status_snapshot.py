"""A realistic ``luffy status`` snapshot (what ``services.status.collect`` returns) for a run
of one learner, four generators (one behind the learner, one in a pod with a long name) and
two verifiers."""

from __future__ import annotations

from typing import Any

LONG_ID = "gen-luffy-generator-7d9f8c6b5-x2k4q-1"


def _generator(i: int, member_id: str, behind: bool = False) -> tuple[dict, dict]:
    member = {
        "role": "generator",
        "id": member_id,
        "host": f"10.0.0.{i}",
        "port": 8101,
        "ready": not behind,
        "not_ready": ["behind the learner: version 35 < 37, fetching the weights"]
        if behind
        else [],
        "policy_version": 35 if behind else 37,
    }
    status = {
        "policy_version": 35 if behind else 37,
        "tokens_per_s": 412.3 * i,
        "inflight": 64,
        "engine_load": {"occupancy": 0.82},
        "sync": {"epoch": 2, "last_error": None},
        "counters": {"tasks": 1523 * i},
    }
    return member, status


def _verifier(i: int) -> tuple[dict, dict]:
    member = {"role": "verifier", "id": f"ver-node0-4129{i}", "host": "10.0.0.1", "port": 8110 + i}
    status = {
        "reward": "math",
        "workers": 4,
        "workers_alive": 4,
        "inflight": 16,
        "counters": {"scored": {"ok": 4000, "wrong": 2000, "timeout": 2}, "timeouts": 2},
    }
    return {**member, "ready": True}, status


def snapshot(run: str = "qwen-7b-luffy-seed1") -> dict[str, Any]:
    generators = [
        _generator(1, "gen-node1-5110"),
        _generator(2, "gen-node2-5120"),
        _generator(3, "gen-node3-5130", behind=True),
        _generator(4, LONG_ID),
    ]
    verifiers = [_verifier(1), _verifier(2)]
    learner = {"role": "learner", "id": "lrn-node0-41233", "host": "10.0.0.1", "port": 8100}
    learner_status = {
        "step": 1000,
        "max_steps": 1000,
        "policy_version": 37,
        "mode": "luffy",
        "reward_mean": 0.41234,
        "resolved": {"stale": 3},
        "last_eval": {"reward_mean": 0.6},
    }
    return {
        "run": run,
        "policy_version": 37,
        "members": {
            "learner": [{**learner, "ready": True, "policy_version": 37}],
            "generator": [m for m, _ in generators],
            "verifier": [m for m, _ in verifiers],
        },
        "statuses": {
            "learner": [learner_status],
            "generator": [s for _, s in generators],
            "verifier": [s for _, s in verifiers],
        },
        "streams": {
            "prompts": {"length": 120, "lag": 12, "pending": 8},
            "rollouts": {"length": 900, "lag": 40, "pending": 16},
            "scored": {"length": 880, "lag": 0, "pending": 4},
            "deadletter": {"length": 1},
        },
    }
