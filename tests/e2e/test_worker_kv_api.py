"""The worker's /kv/* routes over real HTTP: prefetch (then idempotent), pins
and unpins by id and by prefix, per-tier cached tokens in /generate, and a
clear OpenAI-shaped 4xx for every malformed body."""

from __future__ import annotations

import pytest

from tests.support import http_json

pytestmark = pytest.mark.slow

SYSTEM = ("You are a meticulous research assistant. Answer with short, sourced statements. " * 12)


def post(url: str, path: str, body=None, raw: bytes | None = None):
    return http_json("POST", url + path, body, raw=raw)


def test_prefetch_then_generate_reports_the_cached_prefix(worker):
    text = "KV API prefetch test. " + SYSTEM
    status, first = post(worker, "/kv/prefetch", {"text": text})
    assert status == 200, first
    full = first["resident_tokens"]
    assert full > 0 and full % 16 == 0 and first["from"]["computed"] == full
    status, again = post(worker, "/kv/prefetch", {"text": text})
    assert status == 200 and again["from"] == {"l1": full, "l2": 0, "l3": 0, "computed": 0}
    status, out = post(worker, "/generate", {"text": text + " Question: what is KV?",
                                             "sampling_params": {"max_new_tokens": 2, "temperature": 0}})
    assert status == 200
    meta = out["meta_info"]
    assert meta["cached_tokens"] >= full
    assert meta["cached_tokens_by_tier"]["l1"] == meta["cached_tokens"]


def test_pin_and_unpin_by_id_and_by_prefix(worker):
    text = "KV API pin test. " + SYSTEM
    status, res = post(worker, "/kv/prefetch", {"text": text, "pin_ttl_s": 120})
    assert status == 200 and res["pinned_tokens"] == res["resident_tokens"] > 0
    status, stats = http_json("GET", worker + "/kv/stats")
    assert status == 200 and res["pin_id"] in {p["pin_id"] for p in stats["pins"]["active"]}
    status, again = post(worker, "/kv/pin", {"text": text, "ttl_s": 30})  # same prefix: same pin
    assert status == 200 and again["pin_id"] == res["pin_id"]
    assert post(worker, "/kv/unpin", {"pin_id": res["pin_id"]}) == (200, {"pin_id": res["pin_id"], "unpinned": True})
    status, body = post(worker, "/kv/unpin", {"pin_id": res["pin_id"]})
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, pin = post(worker, "/kv/pin", {"text": text, "ttl_s": 30})
    assert status == 200
    assert post(worker, "/kv/unpin", {"text": text})[0] == 200


def test_a_pin_is_renewed_by_its_id_alone(worker):
    text = "KV API renewal test. " + SYSTEM
    status, res = post(worker, "/kv/prefetch", {"text": text, "pin_ttl_s": 5})
    assert status == 200 and res["pin_id"]
    status, renewed = post(worker, "/kv/pin", {"pin_id": res["pin_id"], "ttl_s": 600})
    assert status == 200 and renewed["pin_id"] == res["pin_id"] and renewed["pinned_tokens"] == res["pinned_tokens"]
    assert 590 < renewed["expires_in_s"] <= 600  # extended from 5 s: the TTL the renewal asked for
    status, body = post(worker, "/kv/pin", {"pin_id": res["pin_id"], "text": text, "ttl_s": 5})
    assert status == 400 and body["error"]["param"] == "pin_id"
    assert post(worker, "/kv/unpin", {"pin_id": res["pin_id"]})[0] == 200
    status, body = post(worker, "/kv/pin", {"pin_id": res["pin_id"], "ttl_s": 5})  # gone: nothing to renew
    assert status == 404 and body["error"]["param"] == "pin_id"


def test_pin_of_a_prefix_not_resident_is_404(worker):
    status, body = post(worker, "/kv/pin", {"text": "never seen before, never cached. " * 8, "ttl_s": 5})
    assert status == 404 and "prefetch it first" in body["error"]["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/kv/prefetch", {}, "text"),
    ("/kv/prefetch", {"text": "a", "input_ids": [1, 2]}, "text"),
    ("/kv/prefetch", {"text": "hello", "pin_ttl_s": -1}, "pin_ttl_s"),
    ("/kv/prefetch", {"text": "hello", "pin_ttl_s": 1e9}, "pin_ttl_s"),
    ("/kv/prefetch", {"text": "hello", "surprise": 1}, "surprise"),
    ("/kv/prefetch", {"input_ids": [1, -2, 3]}, "input_ids.1"),
    ("/kv/prefetch", {"input_ids": [10 ** 9]}, "input_ids"),
    ("/kv/prefetch", {"input_ids": []}, "input_ids"),
    ("/kv/pin", {"text": "hello"}, "ttl_s"),
    ("/kv/pin", {"text": "hello", "ttl_s": 0}, "ttl_s"),
    ("/kv/unpin", {}, "text"),
    ("/kv/unpin", {"pin_id": "x", "text": "y"}, "pin_id"),
])
def test_malformed_bodies_get_a_400(worker, path, body, param):
    status, out = post(worker, path, body)
    assert status == 400, out
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["param"] == param


@pytest.mark.parametrize("path", ["/kv/prefetch", "/kv/pin", "/kv/unpin"])
def test_non_json_bodies_get_a_400(worker, path):
    status, out = post(worker, path, raw=b"{not json")
    assert status == 400 and out["error"]["type"] == "invalid_request_error"
    status, out = post(worker, path, [1, 2])
    assert status == 400


def test_server_info_reports_the_tiers_and_the_step_size(worker):
    status, info = http_json("GET", worker + "/get_server_info")
    assert status == 200
    assert info["chunked_prefill_size"] == 2 * 256  # --max-batch-tokens not given: 256 per CPU thread
    tiers = info["kv_tiers"]
    assert tiers["l2_blocks"] > 0 and tiers["l3"].startswith("dir:") and tiers["l3_error"] is None
