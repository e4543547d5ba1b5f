"""Per-node data server (Arrow Flight + Parquet).

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow is imported; this package sets it first (unless
the environment chose one): the system allocator. A data server handles small fragments that come and go,
and Arrow's default pool (mimalloc) keeps about 10 MB more per server after a few requests; one runs per node.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
