"""The engine at run time, split by lifecycle (docs/architecture.md, "The engine"):

- engine.py   — Engine: construction, start/stop, the thread-safe API, what the server reads;
- loop.py     — the engine thread's loop: the inbox, one step after another, step accounting;
- staging.py  — bringing a prompt's prefix up from L2/L3 before it is scheduled;
- outputs.py  — a step's logits to tokens: sampling, verification, stop rules, finishing, emitting;
- kv_api.py   — the KV API the server serves: prefetch, pins, snapshots, cache flush.
"""
