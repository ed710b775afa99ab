"""``homellm train``: model presets, training loop, checkpoints with exact resume, eval, export."""
