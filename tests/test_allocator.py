"""The allocator setting that keeps freed activations for the next training step."""
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_stay_in_the_process_after_tuning():
    # A fresh process: 20 MB blocks are mapped and unmapped by default (glibc's dynamic threshold
    # starts at 128 KiB), so each new one page-faults in again; once tuned they come back from the
    # heap and touching them costs no new page faults.
    code = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import torch
def faults_after_churn():
    for _ in range(3):
        torch.ones(5_000_000)  # 20 MB, allocated, filled and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(5_000_000)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults_after_churn()
from repytilian.allocator import keep_freed_memory
assert keep_freed_memory() and keep_freed_memory()  # idempotent
print(default, faults_after_churn())
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    default, tuned = map(int, out.stdout.split())
    assert default > 10 * 2000  # about 4,900 pages per 20 MB block, faulted in again and again
    assert tuned < default / 10
