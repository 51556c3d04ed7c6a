"""What the engine, the gateway and the SDK share, importing none of them (docs/architecture.md §1):
errors, the KV wire contract and block hashing, the tokenizer, HTTP/SSE helpers, the workflow
schema and run state, and the service plumbing (flags, logs, traces, metrics, OpenAPI, launch)."""
