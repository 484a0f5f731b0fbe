"""ragserve: a guarded RAG chat service on vLLM, packaged as BentoML services."""
