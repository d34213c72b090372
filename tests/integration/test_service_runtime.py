import signal

import httpx

from common.membership import list_members
from common.transport import Keys, StreamPublisher
from tests.integration.helpers import spawn, wait_for


def test_service_process_serves_rest_and_works_in_one_process(
    redis_url, run_name, resilient, rclient, tmp_path
):
    keys = Keys(run_name)
    child = spawn(
        "-m",
        "tests.integration.procs",
        "relay",
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--services.token",
        "s3cret",
        "--redis.block_ms",
        "50",
    )
    try:
        members = wait_for(lambda: list_members(resilient, keys, "relay"), 30, "registration")
        (member,) = members
        assert member["pid"] == child.pid and member["host"] == "127.0.0.1"
        base = f"http://127.0.0.1:{member['port']}"
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10, "ready")
        StreamPublisher(resilient, keys, "prompts").publish([("a", b"1"), ("b", b"2")])
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 2, 10, "relayed entries")

        status = httpx.get(f"{base}/status").json()
        assert status["role"] == "relay" and status["pid"] == child.pid
        assert status["counters"]["committed"] == 2
        metrics = httpx.get(f"{base}/metrics").text
        assert "luffy_relay_relayed_total 2.0" in metrics
        assert "luffy_relay_redis_connected_ratio 1.0" in metrics

        assert httpx.post(f"{base}/control/pause").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/control/pause", headers=auth).json()["paused"] is True
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["reasons"] == ["paused"]
        StreamPublisher(resilient, keys, "prompts").publish([("c", b"3")])
        assert httpx.get(f"{base}/status").json()["paused"] is True
        httpx.post(f"{base}/control/resume", headers=auth)
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 3, 10, "relay after resume")
        assert (tmp_path / run_name / "config.relay.json").is_file()
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    assert list_members(resilient, keys, "relay") == []  # deregistered on a clean stop


def test_a_wedged_work_loop_is_reported_by_the_watchdog(
    redis_url, run_name, resilient, rclient, tmp_path
):
    keys = Keys(run_name)
    child = spawn(
        "-m",
        "tests.integration.procs",
        "relay",
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--redis.block_ms",
        "50",
        "--services.watchdog_s",
        "1.5",
        "--redis.heartbeat_interval_s",
        "0.5",
        "--redis.heartbeat_ttl_s",
        "3",
    )
    try:
        (member,) = wait_for(lambda: list_members(resilient, keys, "relay"), 30, "registration")
        base = f"http://127.0.0.1:{member['port']}"
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10, "ready")
        assert httpx.post(f"{base}/control/stall").json()["stalled"] is True

        def stalled():
            ready = httpx.get(f"{base}/readyz")
            return ready.status_code == 503 and ready.json()["reasons"]

        (reason,) = wait_for(stalled, 20, "the watchdog to see the stall")
        assert reason.startswith("work loop has not advanced for ")
        assert "(services.watchdog_s = 1.5)" in reason
        assert httpx.get(f"{base}/status").json()["loop_idle_s"] >= 1.5  # rounded to 0.1 s
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive, just not making progress
        # luffy status reads the reason from the heartbeat record
        record = wait_for(
            lambda: [m for m in list_members(resilient, keys, "relay") if not m["ready"]],
            10,
            "the heartbeat to carry it",
        )[0]
        assert record["not_ready"][0].startswith("work loop has not advanced")
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
