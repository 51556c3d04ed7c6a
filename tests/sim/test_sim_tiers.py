"""The KV-tier contract tests of the embedded engine (tests/engine/test_tiers_engine.py), run on sim
engines: L2 after L1 eviction, L3 across workers, corrupt L3 blobs, pins under pressure and their
cap, salts, prefetch, tier events, aborts while staging. A sim engine's tokens depend only on the
prompt and seed, so "exact" compares with a sim engine that caches nothing."""

from __future__ import annotations

import pytest

from tests.engine.test_tiers_engine import (  # noqa: F401  (collected here with this module's engines)
    POOL_TOKENS, test_aborts_while_staging_leak_nothing, test_corrupt_l3_blob_is_a_miss_and_output_stays_exact,
    test_l1_eviction_then_l2_hit_is_exact, test_lower_tier_events_are_recorded, test_pin_survives_memory_pressure_then_expires,
    test_pins_beyond_the_cap_are_refused, test_prefetch_alongside_a_decode_keeps_it_exact,
    test_prefetch_computes_then_is_idempotent_and_serves_the_call,
    test_prefix_computed_by_one_engine_loads_from_l3_in_another, test_salted_tenants_never_share_blocks)
from tests.engine.test_tiers_engine import NEW
from tests.sim.support import make_sim_engine
from tests.support import generate, greedy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_engines():
    started = []
    yield started
    for engine in started:
        engine.stop()


@pytest.fixture(scope="module")
def engine_a(model_dir, sim_engines, tmp_path_factory):
    l3 = tmp_path_factory.getbasetemp() / "sim-l3"
    sim_engines.append(make_sim_engine(model_dir, kv_pool_tokens=POOL_TOKENS, l2_blocks=256, l3=f"dir:{l3}",
                                       max_pinned_fraction=0.5))
    return sim_engines[-1]


@pytest.fixture(scope="module")
def engine_b(model_dir, sim_engines, engine_a, tmp_path_factory):
    l3 = tmp_path_factory.getbasetemp() / "sim-l3"
    sim_engines.append(make_sim_engine(model_dir, kv_pool_tokens=POOL_TOKENS, l2_blocks=0, l3=f"dir:{l3}"))
    return sim_engines[-1]


@pytest.fixture(scope="module")
def reference(model_dir, sim_engines):
    """Runs on a sim engine with no prefix cache: the tokens a prompt gives with nothing cached."""
    sim_engines.append(make_sim_engine(model_dir, kv_pool_tokens=4096, enable_prefix_cache=False, l3="none"))
    plain = sim_engines[-1]
    return lambda ids: generate(plain, [ids], greedy(NEW))[0].output_ids


def test_the_tier_engines_are_simulated(engine_a, engine_b):
    assert engine_a.describe()["kind"] == engine_b.describe()["kind"] == "sim"
    assert engine_a.tiers.store is not None and engine_a.l3_id == engine_b.l3_id
