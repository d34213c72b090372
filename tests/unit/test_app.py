import time

import pytest
from fastapi.testclient import TestClient

from common.metrics import MetricNameError, Metrics
from common.shell.app import create_app


class Source:
    """A minimal StatusSource: the protocol every service runtime implements."""

    role, member_id = "verifier", "ver-1"

    def __init__(self):
        self.started = time.time() - 5
        self.reasons: list[str] = []
        self.paused = False

    def alive(self):
        return True

    def not_ready(self):
        return self.reasons

    def status(self):
        return {"counters": {"scored": 3}}

    def controls(self):
        def pause():
            self.paused = True
            return {"paused": True}

        return {"pause": pause}


def client(token=None, limit=2048):
    src = Source()
    metrics = Metrics("verifier")
    metrics.counter("scored_total", "Rollouts scored", ["status"]).labels("ok").inc(3)
    metrics.counter_fn("deadletter_total", "Entries dead-lettered", lambda: {"malformed": 2})
    app = create_app(src, metrics, token=token, max_body_bytes=limit)
    return TestClient(app), src


def test_status_health_ready_and_metrics():
    c, src = client()
    assert c.get("/healthz").json() == {"alive": True}
    assert c.get("/readyz").status_code == 200
    src.reasons = ["redis unreachable"]
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["redis unreachable"]
    status = c.get("/status").json()
    assert status["role"] == "verifier" and status["id"] == "ver-1"
    assert status["uptime_s"] >= 5 and status["counters"] == {"scored": 3}
    assert "version" in status
    text = c.get("/metrics").text
    assert 'luffy_verifier_scored_total{status="ok"} 3.0' in text
    assert 'luffy_verifier_deadletter_total{reason="malformed"} 2.0' in text


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, 401), ("Bearer wrong", 401), ("Basic s3cret", 401), ("Bearer s3cret", 200)],
)
def test_control_routes_need_the_bearer_token(header, code):
    c, src = client(token="s3cret")
    headers = {"Authorization": header} if header else {}
    r = c.post("/control/pause", headers=headers)
    assert r.status_code == code
    assert src.paused == (code == 200)


def test_control_without_token_configured_and_unknown_control():
    c, src = client()
    assert c.post("/control/pause").json() == {"control": "pause", "paused": True}
    assert src.paused
    r = c.post("/control/explode")
    assert r.status_code == 404 and "available: ['pause']" in r.json()["detail"]


def test_request_bodies_are_size_limited():
    c, _ = client(limit=1024)
    r = c.post("/control/pause", content=b"x" * 5000)
    assert r.status_code == 413 and "exceeds 1024 bytes" in r.json()["detail"]

    def chunks():  # no content-length: the limit applies to the streamed bytes
        for _ in range(10):
            yield b"x" * 500

    assert c.post("/control/pause", content=chunks()).status_code == 413
    assert c.post("/control/pause", content=b"x" * 100).status_code == 200


def test_metric_names_follow_the_convention():
    m = Metrics("learner")
    m.gauge("step_time_seconds", "Step time")
    with pytest.raises(MetricNameError, match="must end with a unit"):
        m.gauge("loss", "Loss")
    with pytest.raises(MetricNameError, match="must end with _total"):
        m.counter("steps_seconds", "x")
    with pytest.raises(MetricNameError, match="lowercase"):
        Metrics("Learner")
