"""The SGLang interface agentgate is built against, pinned to one release.

Read from the sglang 0.5.23 wheel on PyPI
(sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl; its _version.py says
0.5.23 and records no commit id). Files read:
  sglang/srt/server_args.py, sglang/srt/arg_groups/fields/*.py
      the CLI (built from those dataclasses; the full table is dumped in
      tests/engine/sglang/sglang-args-0.5.23.tsv by scripts/sglang_args_dump.py)
  sglang/srt/disaggregation/kv_events.py
      event structs, ZmqEventPublisher (PUB + replay ROUTER), KVEventsConfig
  sglang/srt/mem_cache/events.py
      what the radix/hierarchical caches record, and with which medium
  sglang/srt/managers/io_struct.py, sglang/srt/entrypoints/http_server.py,
  sglang/srt/managers/scheduler.py, schedule_batch.py, output_streamer.py
      /generate fields (priority, cache_salt), max_new_tokens=0 = prefill only,
      meta_info.cached_tokens_details {device, host, storage}
  sglang/srt/speculative/spec_info.py
      the builtin speculative algorithm names

When the pinned version moves: regenerate the .tsv on a machine with sglang,
update SGLANG_VERSION and whatever below changed, run tests/engine/sglang.
"""

from __future__ import annotations

SGLANG_VERSION = "0.5.23"
ARGS_TABLE = f"sglang-args-{SGLANG_VERSION}.tsv"  # under tests/engine/sglang/

# Every `launch_server` flag the launcher emits or reads, and whether it takes
# a value (False: a store_true switch).
ARGS: dict[str, bool] = {
    "--model-path": True,
    "--host": True,
    "--port": True,
    "--served-model-name": True,
    "--context-length": True,
    "--dtype": True,
    "--log-level": True,
    "--page-size": True,                   # = our block size, so block hashes line up
    "--disable-radix-cache": False,
    "--kv-events-config": True,            # JSON KVEventsConfig
    "--enable-cache-report": False,        # cached_tokens in OpenAI usage
    "--enable-metrics": False,
    "--enable-hierarchical-cache": False,  # host-memory L2 (HiCache)
    "--hicache-ratio": True,
    "--hicache-size": True,                # GB of host pool; overrides the ratio
    "--hicache-write-policy": True,
    "--hicache-storage-backend": True,     # L3
    "--hicache-storage-backend-extra-config": True,
    "--enable-priority-scheduling": False,
    "--default-priority-value": True,
    "--schedule-low-priority-values-first": False,
    "--speculative-algorithm": True,
    "--speculative-num-draft-tokens": True,
    "--dp-size": True,                     # read from the user's extras: one KV publisher per DP rank
    "--data-parallel-size": True,
}

HICACHE_WRITE_POLICIES = ("write_back", "write_through", "write_through_selective")
HICACHE_STORAGE_BACKENDS = ("file", "sim", "mooncake", "npu_memcache", "hf3fs", "nixl", "aibrix", "dynamic", "eic",
                            "simm", "mori", "shm", "tensorcast", "seaweedfs")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# SpeculativeAlgorithm members (NEXTN is an alias of EAGLE); plugins may register more.
SPECULATIVE_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM", "DFLASH", "DSPARK", "UNO",
                          "FROZEN_KV_MTP")

# -- KV events (kv_events.py) -----------------------------------------------------------------
# Live PUB frames: [topic, seq as 8-byte big-endian, payload]. seq counts from 0 per publisher
# (one publisher per DP rank, on endpoint port + rank).
# Replay ROUTER: a DEALER sends [b"", start_seq 8-byte BE]; the publisher answers one message per
# buffered batch with seq >= start_seq, [b"", topic, seq, payload], then [b"", b"", END_SEQ, b""].
# (Releases before the topic frame was added answered [b"", seq, payload] / [b"", END_SEQ, b""].)
END_SEQ = -1
# payload: msgspec msgpack of KVEventBatch, a positional array [ts, events, attn_dp_rank].
# Each event is a tagged map: {"type": <class name>, <field>: <value>, ...}; optional fields equal
# to None are omitted (omit_defaults). Older releases sent array_like events instead:
# [<class name>, <fields in declaration order>...]. Field order, for those:
BLOCK_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                       "cache_salt", "session_id", "lora_name")
BLOCK_REMOVED_FIELDS = ("block_hashes", "medium")
TAG_FIELD = "type"
TAG_STORED, TAG_REMOVED, TAG_CLEARED = "BlockStored", "BlockRemoved", "AllBlocksCleared"
# StorageMedium values; only GPU and CPU_PINNED are emitted by 0.5.23's caches.
MEDIUM_TIERS = {None: "l1", "GPU": "l1", "CPU_PINNED": "l2", "CPU": "l2", "DISK": "l3", "EXTERNAL": "l3"}
