"""API keys, tenants and what a tenant may see (keys.py), and the HTTP side of it (middleware.py)."""
