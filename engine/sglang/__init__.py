"""Run an SGLang GPU server as an agentgate worker: launcher (args, launcher, cli) and the
KV-event bridge from SGLang's ZMQ publisher to our Redis stream (kv_wire, kv_translate, kv_bridge)."""
