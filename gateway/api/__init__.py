"""HTTP edge: pydantic schemas, error middleware and route handlers."""
