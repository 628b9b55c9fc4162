"""pytest plugin entry point for the dhruva conformance suite (placeholder, being written)."""
