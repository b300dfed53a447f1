"""Built-in edge filters: rate limits, JWT, basic auth, external authorization (one module each)."""
