"""Keep freed memory in the process: CPU training and scoring stop paying the kernel to zero pages.

    python benchmarks/train.py --pairs 16 --configs sdpo-bf16    # the step, with this on (the default)
    SDPO_KIT_MALLOC=system python benchmarks/train.py --pairs 16 --configs sdpo-bf16    # and without

glibc's malloc serves every block over 32 MiB with its own `mmap` and gives it back with `munmap` on
free. A CPU training step allocates such blocks many times: the head's [tokens, vocabulary] logits
(1,200 x 49,152 fp32 = 236 MB), the tied embedding's gradient (113 MB), its bf16 cast, ... Each one
comes back from the kernel as fresh pages, which it zeroes on first touch: on the default model at
192 tokens a sixth of a step's time was system time, and a 236 MB fp32 copy took 81 ms instead of 11.
With mmap off and no trimming, freed blocks stay in malloc's heap and the next step reuses them. This
is what PyTorch's CPU performance guide gets from jemalloc/tcmalloc, with the C library already there.

`keep_freed_memory()` runs once per process, from `models.load_model` (every job that loads a model
for CPU work, `sdpo` and TRL's side of the benchmarks alike). The process then holds its peak heap
until it exits. It does nothing where malloc is not glibc's, where the user preloads another
allocator or set glibc's own `MALLOC_*` tunables, or with `SDPO_KIT_MALLOC=system`.
"""

from __future__ import annotations

import functools
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Turn off glibc malloc's mmap blocks and heap trimming for this process; True when it did."""
    preload = os.environ.get("LD_PRELOAD", "")
    if (os.environ.get("SDPO_KIT_MALLOC", "") == "system" or any(k.startswith("MALLOC_") for k in os.environ)
            or any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # musl, macOS, Windows
            return False
        # mallopt returns 1 on success. The trim threshold is a C int: 2 GiB, more than a step frees at once.
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except OSError:
        return False
