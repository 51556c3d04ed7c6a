"""The workflow DAG: validation, critical paths, templating, edge conditions."""
