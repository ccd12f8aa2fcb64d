"""Process runtime settings: glibc keeps freed memory for the next training step."""

import subprocess
import sys

import pytest

from longrec.runtime import retain_freed_memory

# RSS (MiB) after a 256 MiB tensor is filled and freed, in a fresh interpreter.
PROBE = """
import sys, torch
from longrec.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss_mib()
block = torch.empty(64 * 2**20).fill_(1.0)
del block
print(rss_mib() - before)
"""


def _rss_kept_after_free(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_memory_stays_mapped_after_free():
    assert _rss_kept_after_free("default") < 64  # glibc unmaps a freed 256 MiB block at once
    assert _rss_kept_after_free("retain") > 200  # kept for the next step: no page faults to map it again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retain_freed_memory_is_idempotent():
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
