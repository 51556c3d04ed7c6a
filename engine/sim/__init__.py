"""Simulated GPU workers: the embedded engine with only its model forward pass replaced.

A sim worker runs the same scheduler, radix cache, KV tiers, pins, KV events and HTTP API as
the embedded CPU engine; each step sleeps for the time a step model (aiconfigurator-core's
per-kernel database, or a measured table) predicts for that step's make-up on the stated GPU.
See docs/architecture.md, "Simulated workers".
"""
