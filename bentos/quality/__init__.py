"""Answer quality offline: does each sentence of an answer stand on the chunks it was given (no LLM, no network)."""
