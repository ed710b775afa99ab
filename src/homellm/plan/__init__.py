"""``homellm plan``: what fits, which layout, how fast, how long, how costly; with its working."""
