"""Helpers for the sim tests: a known timing table, and in-process sim engines."""

from __future__ import annotations

import json
from pathlib import Path

# prefill(P) = 10 ms + 20 ms per 1024 tokens; decode(D) = 5 ms + 8 ms per 64 rows; a mixed step pays 4 ms once
KNOWN_TABLE = {"format": "agentgate-step-table/1", "source": "the tests' known table",
               "prefill": {"tokens": [0, 1024], "prefix": [0], "seconds": [[0.010], [0.030]]},
               "decode": {"rows": [0, 64], "context": [0], "seconds": [[0.005], [0.013]]},
               "shared_seconds": 0.004}


def prefill_s(tokens: int) -> float:
    return 0.010 + tokens * 0.020 / 1024


def decode_s(rows: int) -> float:
    return 0.005 + rows * 0.008 / 64


def write_table(path: Path, table: dict = KNOWN_TABLE) -> Path:
    path.write_text(json.dumps(table))
    return path


def sim_spec(speedup: float = 1.0, table: dict = KNOWN_TABLE, storage_gbps: float = 10.0):
    from engine.sim.engine import SimSpec
    from engine.sim.hardware import lookup
    from engine.sim.steptime import TableStepModel

    gpu, model = lookup("h100_sxm", "Qwen/Qwen3-8B")
    return SimSpec(gpu, model, 1, TableStepModel(table, "known"), speedup, storage_gbps * 1e9)


def make_sim_engine(model_dir: Path, spec=None, **overrides):
    """A started in-process SimEngine over the embedded tokenizer; the caller stops it."""
    from engine.config import EngineConfig
    from engine.sim.engine import SimEngine

    cfg = EngineConfig(model_path=str(model_dir), **{"max_batch_tokens": 2048, "prefetch_chunk_tokens": 128,
                                                      **overrides})
    return SimEngine(cfg, spec or sim_spec()).start()
