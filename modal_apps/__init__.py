"""Modal apps: `serve.py` (the GPU endpoint) and `reindex.py` (the scheduled re-index job)."""
