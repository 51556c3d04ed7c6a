"""The KV index: which worker holds which KV block in which tier, fed from the workers' Redis streams."""
