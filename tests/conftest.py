import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# One thread: the test models are tiny, and oversubscribed OpenMP threads on a shared
# 2-core machine run 10x slower than one.
torch.set_num_threads(1)
