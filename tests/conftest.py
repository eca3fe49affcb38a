"""Session-wide test settings."""

import torch

# The models under test are tiny: one intra-op thread is faster and immune to the spin-waiting of
# two OpenMP threads on a shared 2-core machine (benchmarks/bench_threads.py); runs do the same
# through the `cpu_threads: 1` config default.
torch.set_num_threads(1)
