"""The engine's fast decode path: Triton kernels and CUDA graphs (see `decoder.py`).

    attention.py  split-K decode attention over actual lengths (the KV cache read)
    fused.py      add+RMSNorm, q/k norm + rotary + KV write, silu*mul
    sampling.py   the untruncated sampler as one kernel
    decoder.py    FusedDecoder: the decode step and its graphs per batch bucket

Importing this package imports Triton. `INTERPRET` records whether its kernels were built for
Triton's CPU interpreter (TRITON_INTERPRET=1 at import), the only way they run without a GPU.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
