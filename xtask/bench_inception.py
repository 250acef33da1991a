"""PyTorch side of `cargo xtask bench --inception PATH`: pytorch-fid's InceptionV3 (pool3 block,
no resize: the input is already 299x299) with the given weights, forward pass timed.

Usage: python bench_inception.py '<json case>' (weights, batch, warmup, repeats, threads). Needs
`pip install pytorch-fid`. Prints one JSON line with the fields `cargo xtask bench` reads.
"""

import json
import resource
import sys
import time

import torch

case = json.loads(sys.argv[1])
torch.set_num_threads(case["threads"])
from pytorch_fid import inception as pf  # noqa: E402

state = torch.load(case["weights"], map_location="cpu")
# The same blocks as pytorch-fid's FID network, loaded from the file directly (it may lack fc.*).
fid = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
fid.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
fid.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
fid.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
fid.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
fid.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
fid.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
fid.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
fid.Mixed_7b = pf.FIDInceptionE_1(1280)
fid.Mixed_7c = pf.FIDInceptionE_2(2048)
fid.load_state_dict(state, strict=False)
blocks = [fid.Conv2d_1a_3x3, fid.Conv2d_2a_3x3, fid.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, 2),
          fid.Conv2d_3b_1x1, fid.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, 2),
          fid.Mixed_5b, fid.Mixed_5c, fid.Mixed_5d, fid.Mixed_6a, fid.Mixed_6b, fid.Mixed_6c, fid.Mixed_6d,
          fid.Mixed_6e, fid.Mixed_7a, fid.Mixed_7b, fid.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1))]
net = torch.nn.Sequential(*blocks).eval()
x = torch.rand(case["batch"], 3, 299, 299) * 2 - 1
times = []
with torch.no_grad():
    for i in range(case["warmup"] + case["repeats"]):
        start = time.perf_counter()
        net(x)
        if i >= case["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"train_ms": [], "sample_ms": times, "peak_rss_mb": peak, "torch": torch.__version__}))
