"""The operator's console at GET /ui: a static page (static/, no build step, its JS libraries vendored
so it works offline) over the gateway's own API, plus one read-only summary endpoint (api.py)."""
