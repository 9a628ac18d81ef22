"""dadafs: a read-only three-tier caching filesystem for detector data."""
