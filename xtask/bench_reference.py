"""PyTorch side of `cargo xtask bench`: times one case and prints one JSON line.

Usage: python bench_reference.py '<json case>'. The case names the architecture, its config, the
scaling mode, batch, warm-up and repeats and the thread count; `autocast` runs it under
`torch.autocast("cpu", torch.bfloat16)`. U-ViT is the official libs/uvit.py of
ScaleLong (as ../shared/REFERENCE.md describes it) written compactly; the UNet is diffusers'
UNet2DModel (unscaled: diffusers has no skip scaling, so the reference is the plain model).
"""

import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, l, c = x.shape
        q, k, v = self.qkv(x).reshape(b, l, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, l, c))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, skip):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SE(nn.Module):
    def __init__(self, width, r=16):
        super().__init__()
        self.layer1, self.layer2 = nn.Linear(width, width // r), nn.Linear(width // r, width)

    def forward(self, x):  # gates tokens: (B, L, D) -> (B, L, 1)
        return torch.sigmoid(self.layer2(F.relu(self.layer1(x.mean(dim=2))))).unsqueeze(-1)


class UViT(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio=4.0,
                 qkv_bias=False, scaling="none", kappa=0.5, **_):
        super().__init__()
        self.p, self.c, self.d = patch_size, in_chans, embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        tokens = 1 + (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        n = depth // 2
        self.in_blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, False) for _ in range(n))
        self.mid_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, False)
        self.out_blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, True) for _ in range(n))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size ** 2 * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1)
        self.scaling, self.kappa, self.n = scaling, kappa, n
        self.se = SE(tokens) if scaling == "ls" else None

    def scale(self, skip, i):  # skip i = 1 outermost
        if self.scaling == "inv-sqrt2":
            return skip / math.sqrt(2)
        if self.scaling == "cs":
            return skip * self.kappa ** (i - 1)
        if self.scaling == "ls":
            return skip * self.se(skip)
        return skip

    def forward(self, x, t):
        b = x.shape[0]
        h = self.patch_embed(x).flatten(2).transpose(1, 2)
        time = timestep_embedding(t, self.d).unsqueeze(1)
        h = torch.cat([time, h], dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        h = self.mid_block(h)
        for blk in self.out_blocks:
            i = len(skips)
            h = blk(h, self.scale(skips.pop(), i))
        h = self.decoder_pred(self.norm(h))[:, 1:]
        g = int(math.sqrt(h.shape[1]))
        h = h.reshape(b, g, g, self.p, self.p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(b, self.c, g * self.p, g * self.p)
        return self.final_layer(h)


def peak_rss_mb():
    # VmHWM is this process's own peak; ru_maxrss would include the parent's peak inherited at exec.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(case):
    """The case's model, a function of the noised batch giving its output, and the batch shape."""
    cfg, batch = case["config"], case["batch"]
    if case["arch"] == "uvit":
        cfg = {k: v for k, v in cfg.items() if k != "scaling"}
        model = UViT(scaling=case["scaling"], kappa=case.get("kappa", 0.5), **cfg)
        return model, lambda x, t: model(x, t.float()), (batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    from diffusers import UNet2DModel
    keys = {k: (None if v == "none" else v) for k, v in cfg.items() if k != "scaling" and not k.startswith("_")}
    model = UNet2DModel(**keys)
    size = cfg["sample_size"]
    return model, lambda x, t: model(x, t).sample, (batch, cfg.get("in_channels", 3), size, size)


def main():
    case = json.loads(sys.argv[1])
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    model, forward, shape = build(case)
    batch = shape[0]
    t = torch.randint(0, 1000, (batch,))
    run = lambda x: forward(x, t)
    x, eps = torch.randn(shape), torch.randn(shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.99, 0.999), weight_decay=0.03)

    # Mixed precision as PyTorch does it on a CPU: bf16 matmuls and convolutions, f32 weights.
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(case.get("autocast")))

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.mse_loss(run(x).float(), eps)
        loss.backward()
        opt.step()

    def sample_step():
        with torch.no_grad(), autocast():
            run(x)

    out = {}
    for name, step in [("train", train_step), ("sample", sample_step)]:
        for _ in range(case["warmup"]):
            step()
        times = []
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        out[f"{name}_ms"] = times
    out["peak_rss_mb"] = peak_rss_mb()
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
