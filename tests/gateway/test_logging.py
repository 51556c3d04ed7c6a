"""JSON logs with request and workflow ids, and the access log behind --access-log, in a real
`agentgate gateway` process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from common.logconf import REQUEST_ID, WORKFLOW_ID, JsonFormatter
from common.redis_server import RedisServer
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_json_lines_carry_the_ids_in_context():
    record = logging.LogRecord("agentgate.gateway", logging.WARNING, __file__, 1, "node %s failed", ("b",), None)
    assert json.loads(JsonFormatter().format(record)).keys() == {"time", "level", "logger", "message"}
    tokens = REQUEST_ID.set("req-1"), WORKFLOW_ID.set("wf-abc")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(tokens[0])
        WORKFLOW_ID.reset(tokens[1])
    assert line["message"] == "node b failed" and line["level"] == "warning"
    assert line["request_id"] == "req-1" and line["workflow_id"] == "wf-abc"


def _get(url: str, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


@pytest.mark.slow
@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_is_json_with_the_request_id_and_only_behind_its_flag(tmp_path, access_log):
    redis = RedisServer().start()
    port = free_port()
    log_path = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "gateway.main", "--port", str(port), "--redis-url", redis.url, "--log-format", "json"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd + (["--access-log"] if access_log else []), cwd=ROOT, stdout=log, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                status, headers = _get(base + "/health/live", {"X-Request-Id": "probe-7"})
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        assert status == 200 and headers["X-Request-Id"] == "probe-7"
        status, headers = _get(base + "/health/ready", {"X-Request-Id": "probe-8"})
        assert status == 503 and headers["X-Request-Id"] == "probe-8"  # no worker
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        redis.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "agentgate.access"]
    if not access_log:
        assert access == []
        return
    by_id = {line["request_id"]: line for line in access}
    assert by_id["probe-7"]["path"] == "/health/live" and by_id["probe-7"]["status"] == 200
    assert by_id["probe-8"]["path"] == "/health/ready" and by_id["probe-8"]["status"] == 503
    assert by_id["probe-7"]["method"] == "GET" and by_id["probe-7"]["seconds"] >= 0
