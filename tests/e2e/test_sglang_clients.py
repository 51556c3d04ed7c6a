"""Drop-in check: clients built for SGLang work against the engine worker unchanged.

- SGLang's own router (the `sglang-router` package, the real Rust binary) is
  launched with the worker as its only backend; native and OpenAI requests go
  through it and must match what the worker answers directly.
- The official `openai` Python client talks to the worker's /v1 API.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support import free_port, http_json

pytestmark = pytest.mark.slow

ROUTER_START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def router(worker, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("router") / "router.log"
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
           "--worker-urls", worker, "--policy", "cache_aware", "--log-level", "warn",
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sglang router exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                status, models = http_json("GET", url + "/v1/models", timeout=2)
            except OSError:
                status, models = 0, None
            # ready once it has registered the worker (it reads /get_server_info + /get_model_info)
            if status == 200 and isinstance(models, dict) and models.get("data"):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"sglang router not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sglang_router_proxies_generate_exactly(router, worker):
    body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    status, via_router = http_json("POST", router + "/generate", body)
    assert status == 200, via_router
    _, direct = http_json("POST", worker + "/generate", body)
    assert via_router["output_ids"] == direct["output_ids"]
    assert via_router["text"] == direct["text"]
    assert via_router["meta_info"]["finish_reason"] == {"type": "length", "length": 8}


def test_sglang_router_proxies_openai_chat_with_cached_tokens(router):
    system = "You are a careful assistant. " * 20  # > 100 tokens of shared prefix
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Say hi."}]}
    status, first = http_json("POST", router + "/v1/chat/completions", body)
    assert status == 200, first
    body["messages"][1]["content"] = "Say bye."
    status, second = http_json("POST", router + "/v1/chat/completions", body)
    assert status == 200, second
    assert second["object"] == "chat.completion"
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 100


def test_sglang_router_reads_worker_model_info(router):
    status, info = http_json("GET", router + "/get_model_info")
    assert status == 200
    assert info["is_generation"] is True and info["model_path"].endswith("SmolLM2-135M-Instruct")


def test_openai_python_client_chat_and_stream(worker):
    from openai import OpenAI

    client = OpenAI(base_url=worker + "/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "Name a color."}])
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 8
    text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Name a color."}]) if chunk.choices)
    assert text == r.choices[0].message.content


def test_openai_python_client_sees_bad_input_as_bad_request(worker):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=worker + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=8, top_p=0.0,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "top_p must be in (0, 1]" in str(info.value)
