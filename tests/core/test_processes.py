"""Process-level helpers of the core (core/processes.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from portfolio.core.processes import freeze_heap
from portfolio.core.serving.inference import ModelHolder
from portfolio.core.settings import Settings
from tests.support import synthetic

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


# With keep_freed_memory() on, free 64 MB of heap blocks and print the resident MB kept, then the
# resident MB after release_freed_memory().
PEAK = """
import numpy as np
from portfolio.core.processes import keep_freed_memory, release_freed_memory
def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
assert keep_freed_memory()
blocks = [np.ones(1 << 17) for _ in range(64)]  # 1 MB each: on the heap, below mmap's threshold
del blocks
kept = rss_mb()
assert release_freed_memory()
print(kept, rss_mb())
"""


def test_release_freed_memory_hands_the_kept_heap_back() -> None:
    """A worker keeps what it frees (keep_freed_memory); after a model load it hands that peak
    back once (release_freed_memory): here 64 MB freed, then released."""
    done = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True)
    kept, released = (float(v) for v in done.stdout.split())
    assert kept - released > 48, (kept, released)


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_freeze_heap_freezes_what_is_alive_and_collects_old_cycles_when_called_again() -> None:
    """What is alive at the call leaves the collector's reach (a full collection no longer walks
    it); garbage from before the next call (the old model after a reload) is still collected."""
    alive = _Cycle()
    ref = weakref.ref(alive)
    try:
        assert freeze_heap() > 0
        del alive
        gc.collect()
        assert ref() is not None  # frozen: a collection does not see it
        freeze_heap()
        assert ref() is None  # unfrozen first, then collected
    finally:
        gc.unfreeze()


def test_a_loaded_model_is_frozen(synth_trained: Settings) -> None:
    gc.unfreeze()
    try:
        holder = ModelHolder(synthetic.CLASSIFIER, synth_trained)
        predictor = holder.load_now()
        assert gc.get_freeze_count() > 0
        # the model's objects are among the frozen ones: the collector no longer tracks them as
        # part of any generation
        assert all(id(o) != id(predictor.model) for o in gc.get_objects())
    finally:
        gc.unfreeze()
