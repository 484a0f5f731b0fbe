"""Release tooling: the blue-green router, promotion with gates, and the KServe manifests."""
