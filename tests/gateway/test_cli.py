"""`agentgate gateway` starts a serving gateway from its flags."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from common.redis_server import free_port
from tests.support import CHILD_PYTHONPATH, REPO_ROOT, http_json


def test_gateway_subcommand_serves(redis_url, tmp_path):
    port = free_port()
    dead_worker = f"http://127.0.0.1:{free_port()}"
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agentgate.cli", "gateway", "--port", str(port), "--worker-urls",
                             dead_worker, "--redis-url", redis_url, "--policy", "least_load"],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = http_json("GET", url + "/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
                time.sleep(0.1)
        assert status == 503 and body["workers"][dead_worker]["healthy"] is False
        status, body = http_json("GET", url + "/v1/workflows")
        assert status == 200 and body["object"] == "list"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "agentgate gateway listening on" in (tmp_path / "gateway.log").read_text()


def test_fault_flags_reach_the_config():
    import argparse

    from gateway.main import add_gateway_args, fault_options

    parser = argparse.ArgumentParser()
    add_gateway_args(parser)
    defaults = fault_options(parser.parse_args([]))
    assert defaults["first_token_timeout_s"] is None and defaults["inter_token_timeout_s"] is None  # by worker kind
    assert defaults["redis_max_connections"] == 128
    set_ = fault_options(parser.parse_args(["--redis-max-connections", "16", "--redis-retry", "30",
                                            "--first-token-timeout", "20", "--inter-token-timeout", "5"]))
    assert (set_["redis_max_connections"], set_["redis_retry_s"], set_["first_token_timeout_s"],
            set_["inter_token_timeout_s"]) == (16, 30.0, 20.0, 5.0)
