"""``homellm data``: the user's books and dialogue dumps → clean splits → token shards."""
