"""A compact RAM index: key -> (location, length, reference bit), 24 bytes per slot.

Open addressing with linear probing over one flat ``uint64`` numpy array, three words per slot:
the two halves of the 128-bit key and a ``meta`` word::

    bit 63      valid
    bit 62      referenced since written (CLOCK's second-chance bit)
    bits 41-61  length in bytes (1 .. 2**20)
    bit 37      verified: the bytes were hashed by this process since written or recovered
    bits 0-35   location in 512-byte units (32 TiB per device)

The home slot is ``(k0 * golden) mod 2**64 % slots``: uniform for xxh3 keys and still spread for
keys that are not hashes (sequential ids would otherwise form one long probe cluster). Deletion shifts the following
cluster back (no tombstones), so lookups never degrade. The table grows by 1.5x above a load of
0.7, which keeps it between 34 and 52 bytes per entry once past its minimum size. Single scalar
operations go through a ``memoryview`` of the array (cheaper than numpy scalar indexing); loading
and growing are vectorised. Not thread-safe: the owning device holds its lock around every call.
"""

from __future__ import annotations

import numpy as np

VALID = 1 << 63
REF = 1 << 62
VERIFIED = 1 << 37
LEN_SHIFT = 41
LEN_MASK = (1 << 21) - 1
LOC_MASK = (1 << 36) - 1
MAX_LOAD = 0.7
MIN_SLOTS = 1024
GOLDEN = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def home(k0: int, slots: int) -> int:
    return ((k0 * GOLDEN) & M64) % slots


def pack_meta(loc_units: int, length: int, ref: bool = False) -> int:
    return VALID | (REF if ref else 0) | (length << LEN_SHIFT) | loc_units


def meta_loc(meta: int) -> int:
    return meta & LOC_MASK


def meta_len(meta: int) -> int:
    return (meta >> LEN_SHIFT) & LEN_MASK


def split_key(key: bytes) -> tuple[int, int]:
    if len(key) != 16:
        raise ValueError(f"cache keys are 16 bytes (xxh3-128), got {len(key)}")
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


def join_key(k0: int, k1: int) -> bytes:
    return k0.to_bytes(8, "little") + k1.to_bytes(8, "little")


class ChunkIndex:
    def __init__(self, slots: int = MIN_SLOTS) -> None:
        self.count = 0
        self._alloc(max(MIN_SLOTS, slots))

    def _alloc(self, slots: int) -> None:
        self.slots = slots
        self._arr = np.zeros(3 * slots, dtype=np.uint64)
        self._mv = memoryview(self._arr.data).cast("B").cast("Q")

    @property
    def nbytes(self) -> int:
        return int(self._arr.nbytes)

    def find(self, k0: int, k1: int) -> int:
        """Slot of the key, or -1."""
        mv, n = self._mv, self.slots
        i = home(k0, n)
        while True:
            meta = mv[3 * i + 2]
            if not meta:
                return -1
            if mv[3 * i] == k0 and mv[3 * i + 1] == k1:
                return i
            i = i + 1 if i + 1 < n else 0

    def meta(self, slot: int) -> int:
        return int(self._mv[3 * slot + 2])

    def set_meta(self, slot: int, meta: int) -> None:
        self._mv[3 * slot + 2] = meta

    def key_at(self, slot: int) -> tuple[int, int]:
        return int(self._mv[3 * slot]), int(self._mv[3 * slot + 1])

    def put(self, k0: int, k1: int, meta: int) -> None:
        """Insert or replace the key's entry."""
        if (self.count + 1) > MAX_LOAD * self.slots:
            self._grow()
        mv, n = self._mv, self.slots
        i = home(k0, n)
        while True:
            old = mv[3 * i + 2]
            if not old:
                mv[3 * i], mv[3 * i + 1], mv[3 * i + 2] = k0, k1, meta
                self.count += 1
                return
            if mv[3 * i] == k0 and mv[3 * i + 1] == k1:
                mv[3 * i + 2] = meta
                return
            i = i + 1 if i + 1 < n else 0

    def remove_slot(self, slot: int) -> None:
        """Delete the entry in ``slot`` and shift its cluster back (linear-probing deletion)."""
        mv, n = self._mv, self.slots
        i = slot
        j = slot
        while True:
            j = j + 1 if j + 1 < n else 0
            if not mv[3 * j + 2]:
                break
            h = home(mv[3 * j], n)
            # Move j into the hole at i unless j's home lies cyclically in (i, j].
            if (h <= i or h > j) if i <= j else (h <= i and h > j):
                mv[3 * i], mv[3 * i + 1], mv[3 * i + 2] = mv[3 * j], mv[3 * j + 1], mv[3 * j + 2]
                i = j
        mv[3 * i], mv[3 * i + 1], mv[3 * i + 2] = 0, 0, 0
        self.count -= 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (k0, k1, meta) of every entry."""
        t = self._arr.reshape(-1, 3)
        live = t[:, 2] != 0
        return t[live, 0].copy(), t[live, 1].copy(), t[live, 2].copy()

    def clear_bits(self, mask: int) -> None:
        """Clear ``mask`` in every entry's meta word (vectorised; empty slots stay 0)."""
        metas = self._arr[2::3]
        metas &= np.uint64(~mask & ((1 << 64) - 1))

    def clear(self) -> None:
        self.count = 0
        self._alloc(MIN_SLOTS)

    def _grow(self) -> None:
        k0, k1, meta = self.arrays()
        self._alloc(max(MIN_SLOTS, int(self.slots * 1.5)))
        self.count = 0
        self.bulk_insert(k0, k1, meta)

    def bulk_insert(self, k0: np.ndarray, k1: np.ndarray, meta: np.ndarray) -> None:
        """Insert keys that are distinct and absent from the table, vectorised.

        Round by round every pending key tries its current probe slot; of those aiming at the same
        empty slot the first wins, the rest move one slot on. A key only ever skips slots that are
        occupied, so the linear-probing invariant holds as if they were inserted one by one.
        """
        need = self.count + len(k0)
        if need > MAX_LOAD * self.slots:
            old = self.arrays()
            slots = self.slots
            while need > MAX_LOAD * slots:
                slots = int(slots * 1.5)
            self._alloc(slots)
            self.count = 0
            k0 = np.concatenate([old[0], k0.astype(np.uint64)])
            k1 = np.concatenate([old[1], k1.astype(np.uint64)])
            meta = np.concatenate([old[2], meta.astype(np.uint64)])
        t = self._arr.reshape(-1, 3)
        n = np.uint64(self.slots)
        pend = np.arange(len(k0))
        with np.errstate(over="ignore"):
            pos = (k0.astype(np.uint64) * np.uint64(GOLDEN)) % n
        while len(pend):
            free = t[pos.astype(np.int64), 2] == 0
            cand = np.flatnonzero(free)
            _, first = np.unique(pos[cand], return_index=True)
            win = cand[first]
            at = pos[win].astype(np.int64)
            idx = pend[win]
            t[at, 0], t[at, 1], t[at, 2] = k0[idx], k1[idx], meta[idx]
            self.count += len(win)
            lose = np.ones(len(pend), dtype=bool)
            lose[win] = False
            pend = pend[lose]
            pos = (pos[lose] + np.uint64(1)) % n
