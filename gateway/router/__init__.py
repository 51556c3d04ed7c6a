"""Which worker serves a call: the policy contract (base.py) and one module per policy."""
