"""The worker's publishing flags: defaults, and a Redis that does not answer at start-up."""

from __future__ import annotations

import argparse

import pytest
from aiohttp import web

from common.redis_server import free_port
from engine.worker.kv_publish import add_publish_args, setup_publishing


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    add_publish_args(p)
    return p.parse_args(argv)


def test_redis_url_defaults_to_the_environment(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert parse().redis_url is None  # no Redis: the worker runs without publishing
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")
    assert parse().redis_url == "redis://env:6379/0"
    assert parse("--redis-url", "redis://flag:1/0").redis_url == "redis://flag:1/0"


def test_an_unreachable_redis_stops_the_worker_with_a_message_naming_it():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit) as exc:  # before the engine is touched: nothing else is set up yet
        setup_publishing(web.Application(), None, parse("--redis-url", url))
    assert f"REDIS_URL={url}" in str(exc.value.code)


def test_a_non_positive_heartbeat_ttl_is_refused():
    with pytest.raises(SystemExit, match="--worker-heartbeat-ttl"):
        setup_publishing(web.Application(), None, parse("--worker-heartbeat-ttl", "0"))
