"""`sdpo_kit.allocator.keep_freed_memory`: a freed large tensor's pages are reused, not faulted in again.

Each case runs in a fresh interpreter (the setting is per process and one-way): it allocates and
frees a 96 MiB tensor, then counts the page faults of allocating and filling a 64 MiB one. (Freed and
asked again at the very same size, the block may not fit its aligned request when a small object
sits after it; a training step's blocks come in many sizes.)
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from sdpo_kit.allocator import keep_freed_memory
kept = keep_freed_memory()
x = torch.ones(24 * 2**20); del x   # 96 MiB, then freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(16 * 2**20)          # a 64 MiB one, written in full
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 64 * 2**20 // 4096  # 16,384 pages of 4 KiB


def _probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SDPO_KIT_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    on, off = _probe(), _probe(SDPO_KIT_MALLOC="system")
    assert on["kept"] and not off["kept"]
    assert off["faults"] >= PAGES / 2  # glibc's own behaviour: a fresh mmap, every page faulted in again
    assert on["faults"] < PAGES / 20  # the freed block, reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_users_own_malloc_settings_are_left_alone():
    assert not _probe(MALLOC_ARENA_MAX="2")["kept"]
    assert not _probe(LD_PRELOAD="libjemalloc.so.2-not-there")["kept"]
