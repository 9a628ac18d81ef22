"""bitshuffle-LZ4 chunk decompression straight into a caller's buffer.

``bitshuffle.decompress_lz4`` allocates a fresh output array per call; at 18 MB per EigerX 4M
frame that costs page faults worth more than the decompression itself. The same C function,
``bshuf_decompress_lz4``, is exported by bitshuffle's extension module, so we call it through
ctypes (which releases the GIL for the call) with a reused output buffer.

An HDF5 chunk written by filter 32008 starts with a 12-byte header: the uncompressed size
(uint64, big-endian) and the block size in bytes (uint32, big-endian).
"""

from __future__ import annotations

import ctypes
import struct

import bitshuffle
import bitshuffle.ext
import numpy as np

_lib = ctypes.CDLL(bitshuffle.ext.__file__)
_fn = _lib.bshuf_decompress_lz4
_fn.restype = ctypes.c_int64
_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]

HEADER = 12


def decompress_into(chunk: np.ndarray | bytes | memoryview, out: np.ndarray) -> None:
    """Decompress one bitshuffle-LZ4 HDF5 chunk (header included) into contiguous ``out``."""
    src = np.frombuffer(chunk, dtype=np.uint8)
    if src.size < HEADER:
        raise ValueError("bitshuffle-LZ4 chunk shorter than its header")
    total, block_bytes = struct.unpack(">QI", src[:HEADER].tobytes())
    item = out.dtype.itemsize
    if total != out.nbytes or not out.flags.c_contiguous:
        raise ValueError(f"chunk holds {total} bytes, output buffer {out.nbytes}")
    if block_bytes % item:
        raise ValueError(f"block size {block_bytes} not a multiple of the item size {item}")
    n = _fn(src.ctypes.data + HEADER, out.ctypes.data, out.size, item, block_bytes // item)
    if n < 0:
        raise ValueError(f"corrupt bitshuffle-LZ4 chunk (error {n})")


def decompress_reference(chunk: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The same through bitshuffle's own Python API (used by the tests as the reference)."""
    src = np.frombuffer(chunk, dtype=np.uint8)[HEADER:]
    return np.asarray(bitshuffle.decompress_lz4(src, shape, np.dtype(dtype)))
