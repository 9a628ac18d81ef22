"""The proxy's SSD chunk cache: log-structured segments per device, a compact RAM index.

See docs/ssdcache.md for the on-disk layout, recovery, the eviction policy and concurrency rules.
"""

from ..util import parse_size  # one size grammar for the whole project (raises ValueError)
from .store import ChunkRef, ChunkStore

__all__ = ["ChunkRef", "ChunkStore", "parse_size"]
