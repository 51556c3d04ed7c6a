"""A real worker process over real HTTP: SGLang's native API, the OpenAI API,
metrics, control endpoints, bad input, client disconnects and concurrency."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest

from tests.support import http_json

pytestmark = pytest.mark.slow

BS = 16
PROMPT = "The three primary colors are"
LONG_PROMPT = (
    "Read the following note and answer the question after it. The library on Elm Street opens at nine on "
    "weekdays and at ten on Saturdays; it is closed on Sundays. Members may borrow up to eight books at a "
    "time for three weeks, and renew them twice online. Late returns cost twenty cents per book per day. "
    "The reading room on the second floor is quiet, and the children's corner downstairs hosts a story hour "
    "every Wednesday afternoon. Question: how many books may a member borrow?"
)


# -- helpers ---------------------------------------------------------------------------------------------
def get(worker: str, path: str):
    return http_json("GET", worker + path)


def post(worker: str, path: str, body=None, *, raw: bytes | None = None):
    return http_json("POST", worker + path, body, raw=raw)


def generate(worker: str, text=PROMPT, max_new_tokens: int = 8, **extra) -> dict:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0, **extra.pop("sampling", {})}
    body = {"sampling_params": sampling, **extra}
    if "input_ids" not in body:
        body["text"] = text
    status, out = post(worker, "/generate", body)
    assert status == 200, out
    return out


async def sse(resp: aiohttp.ClientResponse):
    """Yield each `data:` payload of an SSE response: parsed JSON, or the string '[DONE]'."""
    async for raw in resp.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        yield payload if payload == "[DONE]" else json.loads(payload)


async def _stream(url: str, body: dict) -> list:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=180)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            return [event async for event in sse(resp)]


def stream(worker: str, path: str, body: dict) -> list:
    """Every SSE payload of one streaming call, [DONE] included."""
    return asyncio.run(_stream(worker + path, body))


def kv_used(worker: str) -> int:
    status, usage = get(worker, "/kv/stats")
    assert status == 200
    return usage["used_blocks"]


def metric(worker: str, name: str) -> float:
    status, text = get(worker, "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_idle(worker: str, timeout: float = 60.0) -> dict:
    """Poll until the worker has no request; returns /kv/stats then."""
    deadline = time.monotonic() + timeout
    while True:
        status, load = get(worker, "/get_load")
        assert status == 200
        if load[0]["num_reqs"] == 0:
            return get(worker, "/kv/stats")[1]
        assert time.monotonic() < deadline, f"worker still busy after {timeout}s: {load}"
        time.sleep(0.1)


async def poll_until(predicate, timeout: float) -> bool:
    """Await predicate() (a blocking call, run in a thread) becoming true, at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.1)
    return False


# -- info endpoints ------------------------------------------------------------------------------------
def test_health(worker):
    assert get(worker, "/health")[0] == 200
    assert get(worker, "/health_generate")[0] == 200


@pytest.mark.parametrize("path", ["/get_server_info", "/server_info"])
def test_server_info(worker, model_dir, path):
    status, info = get(worker, path)
    assert status == 200
    assert info["model_path"] == str(model_dir)
    assert info["page_size"] == 16
    _, usage = get(worker, "/kv/stats")
    assert info["max_total_num_tokens"] == usage["total_blocks"] * 16 > 0
    assert isinstance(info["internal_states"], list) and info["internal_states"]
    assert "last_gen_throughput" in info["internal_states"][0]


@pytest.mark.parametrize("path", ["/get_model_info", "/model_info"])
def test_model_info(worker, model_dir, path):
    status, info = get(worker, path)
    assert status == 200
    assert info["model_path"] == str(model_dir)
    assert info["is_generation"] is True


def test_get_load_is_a_list_with_token_counts(worker):
    status, load = get(worker, "/get_load")
    assert status == 200
    assert isinstance(load, list) and len(load) == 1
    assert {"num_tokens", "num_reqs", "num_waiting_reqs", "num_running_reqs"} <= set(load[0])


def test_get_load_publishes_the_step_cost_learned_from_steps_of_different_sizes(worker):
    """A long prompt's prefill chunks and its decode steps differ in size: from them the worker learns
    seconds ≈ step_s + row_s × decode rows + token_s × prompt tokens (engine/step_cost.py), which the
    gateway's routing reads."""
    long_prompt = " ".join(f"item {i} is {i * 7 % 13} apples;" for i in range(120))
    generate(worker, long_prompt, max_new_tokens=12, sampling={"ignore_eos": True})
    generate(worker, PROMPT + " again", max_new_tokens=12, sampling={"ignore_eos": True})
    status, load = get(worker, "/get_load")
    assert status == 200
    assert set(load[0]) >= {"step_s", "row_s", "token_s"}
    assert load[0]["step_s"] > 0 and load[0]["row_s"] >= 0 and load[0]["token_s"] >= 0


def test_v1_models(worker, model_dir):
    status, body = get(worker, "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == model_dir.name
    assert get(worker, f"/v1/models/{card['id']}")[1]["id"] == card["id"]
    status, err = get(worker, "/v1/models/no-such-model")
    assert status == 404 and err["error"]["code"] == "model_not_found"


# -- /generate -----------------------------------------------------------------------------------------
def test_generate_text_shape(worker, tokenizer):
    out = generate(worker, max_new_tokens=8, sampling={"ignore_eos": True})
    assert isinstance(out["text"], str) and out["text"]
    assert len(out["output_ids"]) == 8
    meta = out["meta_info"]
    assert isinstance(meta["id"], str) and meta["id"]
    assert meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["prompt_tokens"] == len(tokenizer.encode(PROMPT))
    assert meta["completion_tokens"] == 8
    assert isinstance(meta["cached_tokens"], int) and meta["cached_tokens"] % BS == 0
    assert isinstance(meta["e2e_latency"], float) and meta["e2e_latency"] > 0
    assert out["text"] == tokenizer.decode(out["output_ids"])


def test_generate_with_input_ids_matches_text(worker, tokenizer):
    by_text = generate(worker, max_new_tokens=8)
    ids = tokenizer.encode(PROMPT)
    by_ids = generate(worker, input_ids=ids, max_new_tokens=8)
    assert by_ids["output_ids"] == by_text["output_ids"]
    assert by_ids["meta_info"]["prompt_tokens"] == len(ids)


def test_generate_batch_returns_a_list(worker):
    texts = [PROMPT, "Once upon a time,"]
    status, outs = post(worker, "/generate", {"text": texts, "sampling_params": {"max_new_tokens": 6,
                                                                                  "temperature": 0}})
    assert status == 200
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0]["output_ids"] == generate(worker, texts[0], 6)["output_ids"]
    assert outs[1]["output_ids"] == generate(worker, texts[1], 6)["output_ids"]
    assert outs[0]["meta_info"]["id"] != outs[1]["meta_info"]["id"]


def test_generate_stream_is_cumulative_and_ends_with_done(worker):
    body = {"text": PROMPT, "stream": True, "sampling_params": {"max_new_tokens": 10, "temperature": 0,
                                                                 "ignore_eos": True}}
    events = stream(worker, "/generate", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur["text"].startswith(prev["text"])
        assert cur["output_ids"][:len(prev["output_ids"])] == prev["output_ids"]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    final = chunks[-1]
    assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 10}
    assert final["meta_info"]["completion_tokens"] == len(final["output_ids"]) == 10
    plain = generate(worker, max_new_tokens=10, sampling={"ignore_eos": True})
    assert final["text"] == plain["text"]
    assert final["output_ids"] == plain["output_ids"]


def test_stop_string_trims_and_reports_the_match(worker):
    free = generate(worker, "Once upon a time, in a quiet village by the sea,", 24, sampling={"ignore_eos": True})
    text = free["text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    out = generate(worker, "Once upon a time, in a quiet village by the sea,", 24,
                   sampling={"ignore_eos": True, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == text[:text.index(stop)]
    # Streamed, the stop string never leaks into a chunk either.
    events = stream(worker, "/generate", {"text": "Once upon a time, in a quiet village by the sea,", "stream": True,
                                          "sampling_params": {"max_new_tokens": 24, "temperature": 0,
                                                              "ignore_eos": True, "stop": [stop]}})
    assert all(stop not in e["text"] for e in events[:-1])
    assert events[-2]["text"] == out["text"]


def test_return_logprob(worker):
    out = generate(worker, max_new_tokens=6, return_logprob=True)
    lps = out["meta_info"]["output_token_logprobs"]
    assert len(lps) == out["meta_info"]["completion_tokens"] == len(out["output_ids"])
    for (lp, tok, text), want in zip(lps, out["output_ids"]):
        assert isinstance(lp, float) and lp <= 0
        assert tok == want
        assert text is None
    with_top = generate(worker, max_new_tokens=3, return_logprob=True, top_logprobs_num=2,
                        return_text_in_logprobs=True)
    tops = with_top["meta_info"]["output_top_logprobs"]
    assert len(tops) == 3 and all(len(t) == 2 and isinstance(t[0][2], str) for t in tops)


# -- OpenAI API ------------------------------------------------------------------------------------------
def test_v1_completions_non_stream_and_stream(worker):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    status, out = post(worker, "/v1/completions", body)
    assert status == 200, out
    assert out["object"] == "text_completion"
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["text"]
    assert choice["finish_reason"] in ("length", "stop")
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]

    events = stream(worker, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == usage["completion_tokens"]
    assert "cached_tokens" in chunks[-1]["usage"]["prompt_tokens_details"]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] == choice["finish_reason"] and all(r is None for r in reasons[:-1])


def test_v1_usage_reports_cached_tokens_on_a_repeated_long_prompt(worker):
    body = {"prompt": LONG_PROMPT, "max_tokens": 4, "temperature": 0}
    status, first = post(worker, "/v1/completions", body)
    assert status == 200
    assert first["usage"]["prompt_tokens"] > 100
    status, second = post(worker, "/v1/completions", body)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % BS == 0
    assert cached == (second["usage"]["prompt_tokens"] - 1) // BS * BS
    # The chat endpoint reports it too, streamed included.
    chat = {"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 4, "temperature": 0}
    post(worker, "/v1/chat/completions", chat)
    events = stream(worker, "/v1/chat/completions", {**chat, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert events[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_v1_chat_completions_non_stream_and_stream(worker):
    body = {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8, "temperature": 0}
    status, out = post(worker, "/v1/chat/completions", body)
    assert status == 200, out
    assert out["object"] == "chat.completion"
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("length", "stop")
    assert out["usage"]["completion_tokens"] <= 8
    assert "cached_tokens" in out["usage"]["prompt_tokens_details"]

    events = stream(worker, "/v1/chat/completions", {**body, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(deltas) == choice["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == choice["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == out["usage"]["completion_tokens"]


def test_chat_without_max_tokens_is_served_on_a_pool_smaller_than_the_context(worker):
    # The test worker's pool (0.25 GB) holds fewer tokens than the 8192-token
    # context. A chat request that leaves max_tokens out defaults to "the rest
    # of the context"; that default must not turn into "can never fit".
    status, info = get(worker, "/get_server_info")
    assert info["max_total_num_tokens"] < info["context_length"]
    body = {"messages": [{"role": "user", "content": "Reply with one word: what colour is the sky?"}],
            "temperature": 0}
    status, out = post(worker, "/v1/chat/completions", body)
    assert status == 200, out
    assert out["choices"][0]["finish_reason"] == "stop"


def test_n_two_gives_two_choices(worker):
    status, out = post(worker, "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "n": 2,
                                                   "ignore_eos": True})
    assert status == 200, out
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["choices"][0]["text"] == out["choices"][1]["text"]  # greedy: the same twice
    assert out["usage"]["completion_tokens"] == 10
    status, chat = post(worker, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 4, "n": 2, "temperature": 0.8, "seed": 1})
    assert status == 200, chat
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    events = stream(worker, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "n": 2,
                                                "stream": True})
    finished = {c["choices"][0]["index"] for c in events[:-1] if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


# -- metrics and control ----------------------------------------------------------------------------------
def test_metrics_exposes_sglang_and_agentgate_names(worker):
    generate(worker, max_new_tokens=2)
    status, text = get(worker, "/metrics")
    assert status == 200
    for name in ("sglang:num_running_reqs", "sglang:prompt_tokens_total", "sglang:cache_hit_rate",
                 "sglang:time_to_first_token_seconds_bucket", "agentgate:kv_free_blocks"):
        assert name in text, name
    assert metric(worker, "sglang:prompt_tokens_total") > 0


def test_work_counters_count_what_the_forward_passes_computed(worker):
    names = ("agentgate:prefill_computed_tokens_total", "agentgate:prefetch_computed_tokens_total",
             "agentgate:decode_rows_total", "agentgate:engine_steps_total", "agentgate:engine_forward_seconds_total")
    before = {n: metric(worker, n) for n in names}
    out = generate(worker, text=LONG_PROMPT + " Work counters.", max_new_tokens=6, sampling={"ignore_eos": True})
    after = {n: metric(worker, n) for n in names}
    meta = out["meta_info"]
    # the prompt less its cached prefix is prefilled; tokens 2..6 take one decode row each
    assert after[names[0]] - before[names[0]] == meta["prompt_tokens"] - meta["cached_tokens"]
    assert after[names[1]] == before[names[1]]
    assert after[names[2]] - before[names[2]] == 5
    assert after[names[3]] - before[names[3]] >= 6 and after[names[4]] > before[names[4]]
    assert metric(worker, "sglang:num_requests_total") >= 1
    assert 0 <= metric(worker, "sglang:cache_hit_rate") <= 1


def test_flush_cache_when_idle_and_refused_while_busy(worker):
    async def scenario():
        body = {"text": PROMPT, "stream": True, "sampling_params": {"max_new_tokens": 400, "ignore_eos": True,
                                                                     "temperature": 0}}
        async with aiohttp.ClientSession() as session:
            async with session.post(worker + "/generate", json=body) as resp:
                events = sse(resp)
                await events.__anext__()  # running now
                busy = await asyncio.to_thread(post, worker, "/flush_cache")
                rid = (await events.__anext__())["meta_info"]["id"]
                await asyncio.to_thread(post, worker, "/abort_request", {"rid": rid})
                async for _ in events:
                    pass
        return busy

    busy_status, _ = asyncio.run(scenario())
    assert busy_status == 400
    wait_idle(worker)
    status, text = post(worker, "/flush_cache")
    assert status == 200
    assert text.startswith("Cache flushed.")
    _, usage = get(worker, "/kv/stats")
    assert usage["cached_blocks"] == 0 and usage["free_blocks"] == usage["total_blocks"]


def test_abort_request_ends_a_streaming_request(worker):
    rid = f"abort-me-{uuid.uuid4().hex}"

    async def scenario():
        body = {"text": PROMPT, "rid": rid, "stream": True,
                "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0}}
        async with aiohttp.ClientSession() as session:
            async with session.post(worker + "/generate", json=body) as resp:
                events = sse(resp)
                first = await events.__anext__()
                status, _ = await asyncio.to_thread(post, worker, "/abort_request", {"rid": rid})
                rest = [e async for e in events]
        return first, status, rest

    first, status, rest = asyncio.run(scenario())
    assert first["meta_info"]["id"] == rid
    assert status == 200
    assert rest[-1] == "[DONE]"
    final = rest[-2]
    assert final["meta_info"]["finish_reason"]["type"] == "abort"
    assert final["meta_info"]["completion_tokens"] < 400
    assert wait_idle(worker)["used_blocks"] == 0


# -- bad input ---------------------------------------------------------------------------------------------
def _gen(sampling=None, **fields):
    return {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, **(sampling or {})}, **fields}


BAD_REQUESTS = {
    "malformed json": ("/generate", b'{"text": "hi",'),
    "empty body": ("/generate", b""),
    "non-object body": ("/generate", [1, 2]),
    "null body": ("/v1/completions", None),
    "max_new_tokens not a number": ("/generate", _gen({"max_new_tokens": "abc"})),
    "messages not a list": ("/v1/chat/completions", {"messages": "hello", "max_tokens": 4}),
    "empty prompt": ("/generate", {"text": "", "sampling_params": {"max_new_tokens": 4}}),
    "empty input_ids": ("/generate", {"input_ids": [], "sampling_params": {"max_new_tokens": 4}}),
    "empty messages": ("/v1/chat/completions", {"messages": [], "max_tokens": 4}),
    "empty completion prompt": ("/v1/completions", {"prompt": "", "max_tokens": 4}),
    "text and input_ids": ("/generate", {"text": "hi", "input_ids": [1, 2]}),
    "neither text nor input_ids": ("/generate", {"sampling_params": {"max_new_tokens": 4}}),
    "prompt longer than the context": ("/generate", {"input_ids": [1] * 9000,
                                                     "sampling_params": {"max_new_tokens": 4}}),
    "negative max_new_tokens": ("/generate", _gen({"max_new_tokens": -1})),
    "absurd max_new_tokens": ("/generate", _gen({"max_new_tokens": 10**9})),
    "absurd max_tokens": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 10**9}),
    "negative temperature": ("/generate", _gen({"temperature": -1})),
    "top_p zero": ("/generate", _gen({"top_p": 0})),
    "top_p above one": ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "top_p": 1.5}),
    "top_k zero": ("/generate", _gen({"top_k": 0})),
    "unknown sampling param": ("/generate", _gen({"max_new_token": 4})),
    "n zero": ("/generate", _gen({"n": 0})),
    "n zero openai": ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "n": 0}),
    "token id outside the vocab": ("/generate", {"input_ids": [1, 49152], "sampling_params": {"max_new_tokens": 4}}),
    "negative token id": ("/v1/completions", {"prompt": [1, -5], "max_tokens": 4}),
    "never fits the pool": ("/generate", {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 6000}}),
    "empty stop string": ("/generate", _gen({"stop": [""]})),
    "too many top logprobs": ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "logprobs": 50}),
    "regex that does not compile": ("/generate", _gen({"regex": "[a-z"})),
    "two output constraints": ("/generate", _gen({"regex": "[a-z]+", "ebnf": "root ::= \"a\""})),
    "abort body not an object": ("/abort_request", [1]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_with_an_openai_error(worker, case):
    path, body = BAD_REQUESTS[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, out = post(worker, path, raw=raw)
    assert 400 <= status < 500, (status, out)
    assert isinstance(out, dict), out
    err = out["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["code"] is not None
    assert get(worker, "/health")[0] == 200


def test_unknown_path_is_a_json_404(worker):
    status, out = get(worker, "/no/such/path")
    assert status == 404
    assert out["error"]["type"] == "not_found_error"


def test_the_worker_still_serves_after_bad_input(worker):
    for path, body in list(BAD_REQUESTS.values())[:6]:
        post(worker, path, raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert generate(worker, max_new_tokens=3, sampling={"ignore_eos": True})["meta_info"]["completion_tokens"] == 3
    assert wait_idle(worker)["used_blocks"] == 0


# -- disconnects ------------------------------------------------------------------------------------------
def new_log_errors(worker_process, offset: int) -> list[str]:
    """ERROR lines the worker logged after byte `offset` of its log."""
    text = worker_process.log_path.read_bytes()[offset:].decode(errors="replace")
    return [line for line in text.splitlines() if " ERROR " in line or line.startswith("RuntimeError")]


def log_size(worker_process) -> int:
    return worker_process.log_path.stat().st_size


def test_a_disconnected_stream_frees_its_blocks(worker, worker_process):
    baseline = wait_idle(worker)["used_blocks"]
    log_offset = log_size(worker_process)
    aborted_before = metric(worker, "sglang:num_aborted_requests_total")

    async def scenario():
        body = {"text": PROMPT, "stream": True,
                "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0}}
        session = aiohttp.ClientSession()
        try:
            resp = await session.post(worker + "/generate", json=body)
            events = sse(resp)
            await events.__anext__()
            await events.__anext__()
            during = await asyncio.to_thread(kv_used, worker)
            resp.close()  # drop the connection mid-stream
        finally:
            await session.close()
        returned = await poll_until(lambda: kv_used(worker) == baseline, 30)
        return during, returned

    during, returned = asyncio.run(scenario())
    assert during > baseline
    assert returned, f"used_blocks still {kv_used(worker)} (baseline {baseline}) 30 s after the disconnect"
    assert wait_idle(worker)["used_blocks"] == baseline
    assert metric(worker, "sglang:num_aborted_requests_total") == aborted_before + 1
    # A client going away is routine, not a server error.
    assert new_log_errors(worker_process, log_offset) == []


def test_a_cancelled_non_streaming_request_frees_its_blocks(worker, worker_process):
    baseline = wait_idle(worker)["used_blocks"]
    log_offset = log_size(worker_process)
    aborted_before = metric(worker, "sglang:num_aborted_requests_total")

    async def scenario():
        body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}}
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(session.post(worker + "/generate", json=body))
            started = await poll_until(lambda: kv_used(worker) > baseline, 30)
            task.cancel()  # the client gives up: its connection closes
            with pytest.raises(asyncio.CancelledError):
                await task
        returned = await poll_until(lambda: kv_used(worker) == baseline, 30)
        return started, returned

    started, returned = asyncio.run(scenario())
    assert started, "the request never started running"
    assert returned, f"used_blocks still {kv_used(worker)} (baseline {baseline}) 30 s after the cancel"
    assert wait_idle(worker)["used_blocks"] == baseline
    assert metric(worker, "sglang:num_aborted_requests_total") == aborted_before + 1
    assert new_log_errors(worker_process, log_offset) == []


def test_a_client_timeout_frees_the_blocks(worker, worker_process):
    baseline = wait_idle(worker)["used_blocks"]
    aborted_before = metric(worker, "sglang:num_aborted_requests_total")
    log_offset = log_size(worker_process)

    async def scenario():
        body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.post(worker + "/generate", json=body)
        return await poll_until(lambda: kv_used(worker) == baseline, 30)

    assert asyncio.run(scenario())
    assert wait_idle(worker)["used_blocks"] == baseline
    # It was running when the client gave up (2000 tokens take far longer than 2 s) and was aborted.
    assert metric(worker, "sglang:num_aborted_requests_total") == aborted_before + 1
    assert new_log_errors(worker_process, log_offset) == []


# -- concurrency -------------------------------------------------------------------------------------------
def test_eight_concurrent_streams_all_complete(worker):
    prompts = [f"Write a short sentence about the number {i}." for i in range(8)]

    async def one(session, i):
        body = {"text": prompts[i], "stream": True,
                "sampling_params": {"max_new_tokens": 8 + i, "ignore_eos": True, "temperature": 0}}
        async with session.post(worker + "/generate", json=body) as resp:
            assert resp.status == 200
            return [e async for e in sse(resp)]

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            return await asyncio.gather(*(one(session, i) for i in range(8)))

    results = asyncio.run(scenario())
    for i, events in enumerate(results):
        assert events[-1] == "[DONE]"
        final = events[-2]
        assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 8 + i}
        assert final["meta_info"]["completion_tokens"] == len(final["output_ids"]) == 8 + i
    # Batched, each stream produced what it produces alone.
    alone = generate(worker, prompts[3], 11, sampling={"ignore_eos": True})
    assert results[3][-2]["output_ids"] == alone["output_ids"]
    assert wait_idle(worker)["used_blocks"] == 0
