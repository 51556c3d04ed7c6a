"""Redis-backed state: workflow specs, node states, event streams, ownership leases."""
