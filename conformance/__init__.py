"""dhruva's storage conformance suite, an installable pytest plugin."""
