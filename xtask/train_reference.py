"""PyTorch side of `cargo xtask bench --train CONFIG`: the training loop of a scalelong recipe in
PyTorch, timed as `scalelong train` times itself (images per second over each `log.every` window).

Usage: python train_reference.py '<json case>' (arch, config, scaling, kappa, batch, steps,
log_every, lr, betas, eps, weight_decay, warmup_steps, grad_clip, ema_decay, hflip, images,
threads, autocast: the forward under `torch.autocast("cpu", torch.bfloat16)`, as the recipe's
`train.autocast = "bf16"`). The model comes from bench_reference.py (the official U-ViT written compactly, or
diffusers' UNet2DModel); the loop is what the official code and diffusers' train_unconditional.py
do per step: a shuffled in-memory batch (random images of the dataset's size and shape: their
values cost nothing), random flips if the recipe has them, eps-prediction on a linear-beta DDPM
schedule, MSE, backward, global-norm clipping, AdamW with linear warm-up, an in-place EMA. Prints
one JSON line: {"img_per_s": [...], "torch": ...}.
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_reference import build, peak_rss_mb  # noqa: E402

case = json.loads(sys.argv[1])
torch.set_num_threads(case["threads"])
torch.manual_seed(0)
model, forward, shape = build(case)
model.train()
ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
params = dict(model.named_parameters())
opt = torch.optim.AdamW(model.parameters(), lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"],
                        weight_decay=case["weight_decay"])
data = torch.rand(case["images"], *shape[1:]) * 2 - 1
betas = torch.linspace(1e-4, 0.02, 1000)
alphas_cumprod = torch.cumprod(1 - betas, 0)
batch, order, position = shape[0], torch.randperm(case["images"]), 0
windows, images, start = [], 0, time.perf_counter()
for step in range(1, case["steps"] + 1):
    if position + batch > len(order):
        order, position = torch.randperm(case["images"]), 0
    x0 = data[order[position:position + batch]]
    position += batch
    if case["hflip"]:
        flip = torch.rand(batch) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, 1000, (batch,))
    eps = torch.randn_like(x0)
    a = alphas_cumprod[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    for g in opt.param_groups:
        g["lr"] = case["lr"] * min(1.0, (step - 1) / max(case["warmup_steps"], 1))
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(case.get("autocast"))):
        loss = F.mse_loss(forward(x_t, t).float(), eps)
    loss.backward()
    if case["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), case["grad_clip"])
    opt.step()
    with torch.no_grad():
        d = case["ema_decay"]
        for k, p in params.items():
            ema[k].mul_(d).add_(p.detach(), alpha=1 - d)
    loss.item()  # the loop logs its loss, as ours does every step
    images += batch
    if step % case["log_every"] == 0 or step == case["steps"]:
        windows.append(images / (time.perf_counter() - start))
        images, start = 0, time.perf_counter()
print(json.dumps({"img_per_s": windows, "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__,
                  "loss": loss.item()}))
