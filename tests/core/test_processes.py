"""Process-level helpers of the core (core/processes.py)."""

from __future__ import annotations

import subprocess
import sys

# Allocate and free arrays of several sizes (1-17 MB) in rounds, as a batch request does, and
# print the page faults of the last 20 rounds.
ROUNDS = """
import resource, sys
import numpy as np
from portfolio.core.processes import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def one_round():
    arrays = [np.ones(mb << 17) for mb in (9, 3, 17, 5, 12, 1, 7)]
    del arrays
for _ in range(3):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_round(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    """With glibc's defaults these rounds fault their pages in again each time (thousands of
    faults a round); after keep_freed_memory() the freed heap is reused (almost none)."""
    assert _faults_per_round("default") > 500
    assert _faults_per_round("keep") < 50
