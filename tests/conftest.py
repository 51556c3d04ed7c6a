"""Session fixtures shared by the whole suite.

The model is loaded as few times as the 2-core test machines allow: one
in-process fp32 Engine (`engine_fp32`) and one real worker subprocess
(`worker`) per session. Tests that need a differently configured engine build
it with `make_engine` at module scope and stop it when their module ends.
Helpers that drive them live in tests/support.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ENGINE_DEFAULTS, start_worker, stop_worker


@pytest.fixture(scope="session", autouse=True)
def private_host_registry(tmp_path_factory):
    """The suite's workers share cores with each other, not with workers a developer runs beside it: they
    register in a host registry of their own (engine/hostshare.py)."""
    import os

    os.environ["AGENTGATE_HOST_REGISTRY"] = str(tmp_path_factory.mktemp("host-registry"))
    yield


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The prepared embedded model (converted from the shipped GGUF on first use)."""
    from engine.model.prepare import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from common.tokenizer import Tokenizer

    return Tokenizer(model_dir)


@pytest.fixture(scope="session")
def make_engine(model_dir):
    """make_engine(**EngineConfig overrides) -> a started in-process Engine; every
    one is stopped at session end at the latest."""
    from engine.config import EngineConfig
    from engine.runtime.engine import Engine

    started = []

    def make(**overrides):
        cfg = EngineConfig(model_path=str(model_dir), **{**ENGINE_DEFAULTS, **overrides})
        engine = Engine(cfg).start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.stop()


@pytest.fixture(scope="session")
def engine_fp32(make_engine):
    """The session's shared engine: fp32, 2 threads, a 0.25 GB pool, prefix cache on."""
    return make_engine()


@pytest.fixture(scope="session")
def worker_process(model_dir, tmp_path_factory):
    worker = start_worker(model_dir, tmp_path_factory.mktemp("worker"))
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="session")
def worker(worker_process) -> str:
    """Base URL of a real `engine.worker.main` process (fp32, 2 threads, 0.25 GB KV pool)."""
    return worker_process.url
