"""A workflow as data: the submission schema (schemas.py), the frozen spec (spec.py), DAG checks and
critical paths (dag.py), templates and references (templating.py, templates.py), edge conditions
(conditions.py), the sampling fields a call may carry (sampling.py), and a run's state (run.py)."""
