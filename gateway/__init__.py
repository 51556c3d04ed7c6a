"""The agentgate gateway: workflow DAGs and OpenAI calls in, SGLang-API workers out.

The tree is the request path: api (HTTP edge) → planner (DAG) → scheduler (ready
set, priority) → router (which worker) → workers (HTTP client, health); state
holds everything that must survive a restart (Redis). app.py wires them.
"""
