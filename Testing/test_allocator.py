"""`lckd segment`'s allocator setting: freed large blocks stay in the process for reuse (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from lckd.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

block = np.ones(2**27 // 8)  # 128 MiB, far above glibc's largest mmap threshold (32 MiB)
held = resident_mb()
del block
print(applied, held - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_stay_resident_only_with_the_setting():
    def released_mb(mode: str):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
        applied, released = out.split()
        return applied == "True", float(released)

    applied, kept_release = released_mb("keep")
    _, default_release = released_mb("default")
    assert applied
    assert default_release > 100  # glibc unmaps the block on free by default
    assert kept_release < 8  # with the setting the freed block stays for the next allocation
