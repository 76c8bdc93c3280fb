"""Model catalog, the backend contract and the built-in backends."""
