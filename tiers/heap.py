"""CPython's cyclic garbage collector, set for a server whose requests leave no cycles behind.

With CPython's defaults (thresholds 700, 10, 10) the gateway at saturation ran a young collection every six
requests or so, and every few seconds a full one that walked the ~470,000 objects startup built (pydantic's
schemas, FastAPI's routes, the tokenizer's tables): 0.29 s each on this project's 2-core machine, with every
request in flight waiting (docs/benchmarks.md). Nothing a request allocates outlives it in a cycle (refcounting
frees it), so after startup the heap is frozen out of collections and the young generation is collected only
after many more allocations than frees. Cycles are still collected: later, and without walking startup's heap.
"""

from __future__ import annotations

import gc

# Net allocations (allocations less frees of objects the collector tracks) before a young collection.
YOUNG_THRESHOLD = 10_000


def settle_after_startup() -> None:
    """Collect what startup left, freeze the rest out of later collections, and space young collections out."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
