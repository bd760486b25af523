#!/usr/bin/env python3
"""PyTorch eager twin of MultiR-Net, the anchor of the model benchmark.

    python bench/model/reference.py --model small|paper|tiny --batch 16 --passes 20 \
        --device cuda|cpu [--fp16 | --bf16] [--train-step]

It re-implements, module for module, the network of common/src/model/net.rs
with the presets of common/src/model/config.rs (same layers, same shapes,
same parameter count: paper 15,708,491, small 725,336), so that
bench/gpu/run.sh can time `multir bench-model` (tch) and this script on the
same card, one after the other, with the same protocol: torch.manual_seed(0),
a random batch N x 1 x D x H x W (the config's patch is [i, j, k] = [W, H, D]),
two warm-up forwards, then `--passes` timed forwards (each one the first pass
plus `iterations` refinements) under inference_mode, and autocast with the
chosen dtype for --fp16 / --bf16, the clock bracketed by cuda.synchronize().
With --train-step it also times forward + backward + Adam(lr 3e-4) steps, the
loss being mean(sigmoid(seg)) + cross-entropy on the class logits (labels 0),
after one warm-up step. Prints one JSON line (parameters, infer_windows_per_s,
train_s_per_step, train_windows_per_s, ...), appended by run.sh to bench.jsonl
next to the Rust lines.

The weights are random (kaiming-uniform convolutions as in net.rs): this is a
timing and shape reference, not a checkpoint loader.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-5
IN_CHANNELS = 2  # the volume and the previous fused map

# config.rs presets. patch is [i, j, k] = [W, H, D] (PAPER_PATCH = [96, 96, 32]).
PRESETS = {
    "paper": dict(
        widths=[16, 32, 64, 128, 256],
        convs=[1, 2, 3, 3, 3],
        cls_widths=[16, 32, 64, 128, 128, 256],
        iterations=1,
        reverse_attention=True,
        classes=3,
        patch=[96, 96, 32],
        norm_groups=8,
    ),
    "small": dict(
        widths=[8, 16, 24, 32, 48],
        convs=[1, 1, 2, 2, 2],
        cls_widths=[8, 12, 16, 24, 32, 48],
        iterations=1,
        reverse_attention=True,
        classes=3,
        patch=[96, 96, 32],
        norm_groups=4,
    ),
    "tiny": dict(
        widths=[4, 8, 8],
        convs=[1, 1, 1],
        cls_widths=[4, 4, 8, 8, 8, 8],
        iterations=1,
        reverse_attention=True,
        classes=3,
        patch=[16, 16, 8],
        norm_groups=2,
    ),
}


def norm_groups_for(c, groups):
    """Largest divisor of c not above the configured group count."""
    for g in range(min(groups, c), 0, -1):
        if c % g == 0:
            return g
    return 1


def conv3d(cin, cout, k, stride):
    # "Same" padding for odd kernels, none for the 2x2x2 down-convolutions.
    conv = nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2 if k % 2 else 0, bias=True)
    nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def deconv3d(cin, cout, stride, ones=False):
    # Kernel = stride: exact stride-fold up-sampling.
    up = nn.ConvTranspose3d(cin, cout, stride, stride=stride, bias=True)
    if ones:
        nn.init.ones_(up.weight)
    else:
        nn.init.kaiming_uniform_(up.weight, nonlinearity="relu")
    nn.init.zeros_(up.bias)
    return up


class NormAct(nn.Module):
    """GroupNorm (affine) then PReLU with one shared slope."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups_for(c, groups), c, eps=NORM_EPS, affine=True)
        self.act = nn.PReLU(num_parameters=1, init=0.25)

    def forward(self, x):
        return self.act(self.norm(x))


class Block(nn.Module):
    """Convolution (with bias), normalisation, activation."""

    def __init__(self, cin, cout, k, stride, groups):
        super().__init__()
        self.conv = conv3d(cin, cout, k, stride)
        self.act = NormAct(cout, groups)

    def forward(self, x):
        return self.act(self.conv(x))


class Residual(nn.Module):
    """V-Net residual stage: a chain of 3x3x3 blocks plus the input."""

    def __init__(self, c, n, groups):
        super().__init__()
        self.blocks = nn.ModuleList(Block(c, c, 3, 1, groups) for _ in range(n))

    def forward(self, x):
        h = x
        for b in self.blocks:
            h = b(h)
        return h + x


class EncoderStage(nn.Module):
    def __init__(self, i, widths, convs, groups):
        super().__init__()
        if i == 0:
            self.entry = Block(IN_CHANNELS, widths[0], 3, 1, groups)
        else:
            self.entry = Block(widths[i - 1], widths[i], 2, 2, groups)
        self.residual = Residual(widths[i], convs[i], groups)

    def forward(self, x):
        return self.residual(self.entry(x))


class DecoderStage(nn.Module):
    def __init__(self, i, widths, convs, groups, reverse_attention):
        super().__init__()
        c = widths[i]
        self.up = deconv3d(widths[i + 1], c, 2)
        self.up_act = NormAct(c, groups)
        self.attention = Block(c, c, 3, 1, groups) if reverse_attention else None
        self.merge = Block(2 * c, c, 3, 1, groups)
        self.residual = Residual(c, convs[i], groups)

    def forward(self, h, skip, coarse_map):
        up = self.up_act(self.up(h))
        if self.attention is not None:
            # Reverse attention: erase what the coarser level already predicts.
            a = F.interpolate(coarse_map, size=skip.shape[2:], mode="trilinear", align_corners=False)
            skip = self.attention(skip * (1.0 - torch.sigmoid(a)))
        return self.residual(self.merge(torch.cat([up, skip], dim=1)))


class ClsModule(nn.Module):
    """Two blocks (the first possibly strided) plus a 1x1x1 projection shortcut."""

    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.a = Block(cin, cout, 3, stride, groups)
        self.b = Block(cout, cout, 3, 1, groups)
        self.shortcut = conv3d(cin, cout, 1, stride)

    def forward(self, x):
        return self.b(self.a(x)) + self.shortcut(x)


class MultiRNet(nn.Module):
    def __init__(self, widths, convs, cls_widths, iterations, reverse_attention, classes,
                 patch, norm_groups):
        super().__init__()
        g = norm_groups
        l = len(widths)
        self.levels = l
        self.iterations = iterations
        self.encoder = nn.ModuleList(EncoderStage(i, widths, convs, g) for i in range(l))
        self.decoder = nn.ModuleList(
            DecoderStage(i, widths, convs, g, reverse_attention) for i in range(l - 1)
        )
        # Side map S_i of every level; the last one reads the encoder bottom.
        self.side = nn.ModuleList(conv3d(widths[i], 1, 1, 1) for i in range(l))
        # S_i (i >= 1) brought to full size, initialised as nearest-neighbour.
        self.fuse_up = nn.ModuleList(deconv3d(1, 1, 1 << i, ones=True) for i in range(1, l))
        # Fusion::Learned: trained alpha_i, initialised to 1/levels.
        self.alpha = nn.Parameter(torch.full((l,), 1.0 / l))
        mods, cin = [], 1
        for m, cout in enumerate(cls_widths):
            mods.append(ClsModule(cin, cout, 2 if 1 <= m <= 4 else 1, g))
            cin = cout
        self.cls = nn.ModuleList(mods)
        feat = cls_widths[5] + widths[l - 1]
        self.head = nn.Linear(feat, classes)
        bound = 1.0 / feat ** 0.5
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        unit = 1 << (self.levels - 1)
        if x.dim() != 5 or x.shape[1] != 1 or any(s <= 0 or s % unit for s in x.shape[2:]):
            raise ValueError(
                f"MultiR-Net input must be N x 1 x D x H x W with D, H, W multiples of "
                f"{unit}, got {list(x.shape)}"
            )
        prev = torch.zeros_like(x)
        out = None
        for _ in range(self.iterations + 1):
            out = self.one_pass(x, prev)
            prev = torch.sigmoid(out[0])
        return out

    def one_pass(self, x, prev):
        l = self.levels
        h = torch.cat([x, prev], dim=1)
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        s_maps = [None] * l
        s_maps[l - 1] = self.side[l - 1](h)
        for i in range(l - 2, -1, -1):
            h = self.decoder[i](h, skips[i], s_maps[i + 1])
            s_maps[i] = self.side[i](h)
        # Multi-scale fusion, eq. 1.
        fused = s_maps[0] * self.alpha[0]
        for i in range(1, l):
            fused = fused + self.fuse_up[i - 1](s_maps[i]) * self.alpha[i]
        # Classification subnet on image x predicted mask.
        c = x * torch.sigmoid(fused)
        for m in self.cls:
            c = m(c)
        pooled_cls = c.mean(dim=(2, 3, 4), dtype=torch.float32)
        pooled_seg = skips[l - 1].mean(dim=(2, 3, 4), dtype=torch.float32)
        class_logits = self.head(torch.cat([pooled_cls, pooled_seg], dim=1))
        return fused, class_logits, c


def parameter_count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(PRESETS), default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="autocast to float16")
    prec.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--train-step", action="store_true",
                    help="also time forward + backward + Adam steps")
    args = ap.parse_args()
    if args.batch < 1 or args.passes < 1:
        raise SystemExit("--batch and --passes must be at least 1")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp_dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
    dtype_name = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"

    cfg = PRESETS[args.model]
    torch.manual_seed(0)
    net = MultiRNet(**cfg).to(device).eval()
    params = parameter_count(net)
    i, j, k = cfg["patch"]
    x = torch.rand(args.batch, 1, k, j, i, device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def infer():
        with torch.inference_mode(), autocast():
            seg, cls, _ = net(x)
            # As the Rust predictor: probabilities in fp32, output touched.
            p = torch.sigmoid(seg.float())
            torch.softmax(cls.float(), dim=1)
            p.sum()

    for _ in range(2):
        infer()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.passes):
        infer()
    sync()
    secs = time.perf_counter() - t0

    out = {
        "impl": "pytorch-eager",
        "model": args.model,
        "parameters": params,
        "device": str(device),
        "batch": args.batch,
        "patch": cfg["patch"],
        "dtype": dtype_name,
        "mixed_precision": amp_dtype is not None,
        "infer_windows_per_s": args.passes * args.batch / secs,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(device)

    if args.train_step:
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8)
        scaler = torch.amp.GradScaler(device.type, enabled=args.fp16)
        labels = torch.zeros(args.batch, dtype=torch.long, device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                seg, cls, _ = net(x)
                loss = torch.sigmoid(seg.float()).mean() + F.cross_entropy(cls.float(), labels)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        step()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.passes):
            step()
        sync()
        s = (time.perf_counter() - t0) / args.passes
        out["train_s_per_step"] = s
        out["train_windows_per_s"] = args.batch / s

    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
