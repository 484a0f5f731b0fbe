"""Retrieval: reading and chunking documents, embedding them, and a versioned LanceDB index."""
