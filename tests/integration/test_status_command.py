"""``luffy status --json`` and ``--watch`` against the real Redis: a run whose members are
registered as services register themselves, one of them serving its /status."""

import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from common.config import load_config
from common.net import free_port
from common.transport import Keys
from services.status import frame, status_client, watch
from tests.integration.helpers import REPO
from tests.unit.status_snapshot import snapshot

GENERATOR_STATUS = snapshot()["statuses"]["generator"][0]


class _Status(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(GENERATOR_STATUS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def live_run(rclient, run_name):
    """The realistic snapshot's members in Redis; the first generator answers /status, the
    others' ports are closed (their status is left empty, as for a member just gone)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    keys, closed = Keys(run_name), free_port()
    for role, members in snapshot()["members"].items():
        for i, member in enumerate(members):
            port = server.server_address[1] if (role, i) == ("generator", 0) else closed
            record = {**member, "host": "127.0.0.1", "port": port}
            rclient.set(keys.member(role, member["id"]), json.dumps(record), px=60_000)
    yield snapshot()["members"]
    server.shutdown()
    server.server_close()


def test_json_is_the_snapshot_for_scripts(live_run, redis_url, run_name):
    args = ["status", "--json", "--run.name", run_name, "--redis.url", redis_url]
    out = subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert snap["run"] == run_name
    for role, members in live_run.items():
        assert [m["id"] for m in snap["members"][role]] == sorted(m["id"] for m in members)
        assert len(snap["statuses"][role]) == len(members)
    generators = snap["statuses"]["generator"]
    by_id = {m["id"]: s for m, s in zip(snap["members"]["generator"], generators, strict=True)}
    assert by_id["gen-node1-5110"] == GENERATOR_STATUS  # the one that serves its /status
    assert by_id["gen-node2-5120"] == {}  # gone: its port is closed
    assert set(snap["streams"]) == {"prompts", "rollouts", "scored", "deadletter"}


def test_watch_redraws_in_place_until_stopped(live_run, redis_url, run_name):
    cfg = load_config(None, ["--run.name", run_name, "--redis.url", redis_url])
    screen = io.StringIO()
    console = Console(file=screen, width=120, force_terminal=True, color_system=None)
    assert watch(cfg, 0.05, console=console, refreshes=3) == 0
    drawn = screen.getvalue()
    # three frames, each drawn over the last, and the last once more as the live view stops
    assert drawn.count(f"run {run_name}") == 3 + 1
    assert "\x1b[" in drawn  # cursor movement: in place, not appended
    assert "gen-node1-5110" in drawn and "412.3 tok/s" in drawn and "Ctrl-C stops" in drawn


def test_a_frame_without_redis_says_so_and_the_watch_goes_on(run_name):
    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = load_config(None, ["--run.name", run_name, "--redis.url", url])
    from common.transport import Resilient

    with status_client() as http:
        shown = frame(cfg, 2.0, Resilient.from_config(cfg.redis), http)
    assert "is not reachable" in shown.plain and "retrying every 2s" in shown.plain


def test_ctrl_c_ends_a_watch_cleanly(live_run, redis_url, run_name, monkeypatch):
    cfg = load_config(None, ["--run.name", run_name, "--redis.url", redis_url])

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("services.status.time.sleep", ctrl_c)
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    assert watch(cfg, 2.0, console=console) == 0  # no refresh limit: only Ctrl-C stops it
