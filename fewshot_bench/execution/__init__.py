"""Running methods on episodes: the harness, run, tune, reproduce, dry-run, campaign and the sealed worker."""
