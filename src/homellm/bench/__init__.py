"""``homellm bench``: load-test any OpenAI-compatible endpoint with vLLM's metric definitions."""
