"""The results store: its schema, shards and the environment a run executed in."""
