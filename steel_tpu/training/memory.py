"""Resident memory of this process: what the training log records, and returning freed heap pages to the OS."""

import ctypes
import ctypes.util
import gc
import resource
import sys

_MB = 1 << 20


def rss_mb():
    """Resident set size now, in MB (Linux /proc; elsewhere the peak, the best the OS offers without psutil)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return _maxrss_mb()
    return round(pages * resource.getpagesize() / _MB, 1)


def peak_rss_mb():
    """The largest resident set size this process has had, in MB."""
    # The kernel updates the high-water mark lazily: it can lag the current size by a few pages.
    return max(_maxrss_mb(), rss_mb())


def _maxrss_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (_MB if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KB on Linux


def _malloc_trim():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


_TRIM = _malloc_trim()


def collect():
    """Collect garbage, then hand the heap's free pages back to the OS.

    glibc keeps freed memory in its arenas (one per thread that allocated: tf.data and XLA use many), so a
    process that freed a fold's tensors still looks as big as at its peak; malloc_trim releases those pages.
    """
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
