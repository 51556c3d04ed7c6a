"""Agent awareness: predict a workflow's next calls, prefetch and pin their prompt prefixes on the
worker that will serve them, pipeline tokens into downstream prompts, and learn from client-driven
agents' tagged calls. The scheduler reaches it only through `scheduler/hooks.py:AwarenessHooks`,
handed in at construction (docs/architecture.md §5)."""
