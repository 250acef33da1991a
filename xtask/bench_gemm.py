"""PyTorch side of `cargo xtask bench --peak`: one square f32 `torch.matmul` (MKL or oneDNN,
whichever this torch build uses), timed; with `bf16`, the same f32 tensors under
`torch.autocast("cpu", torch.bfloat16)` (oneDNN's bf16 GEMM, on AMX where the CPU has it).

Usage: python bench_gemm.py '<json case>' (n, bf16, warmup, repeats, threads). Prints one JSON
line with the fields `cargo xtask bench` reads.
"""

import contextlib
import json
import resource
import sys
import time

import torch

case = json.loads(sys.argv[1])
torch.set_num_threads(case["threads"])
n = case["n"]
a, b = torch.rand(n, n) * 2 - 1, torch.rand(n, n) * 2 - 1
times = []
autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case.get("bf16") else contextlib.nullcontext()
with torch.no_grad(), autocast:
    for i in range(case["warmup"] + case["repeats"]):
        start = time.perf_counter()
        torch.matmul(a, b)
        if i >= case["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"train_ms": [], "sample_ms": times, "peak_rss_mb": peak, "torch": torch.__version__}))
