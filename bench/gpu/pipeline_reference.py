#!/usr/bin/env python3
"""The serial Python pipeline that `multir run` is measured against on a GPU.

    python bench/gpu/pipeline_reference.py SCAN.nii.gz... --out DIR [--bf16]

Per scan, one after the other, as a straightforward research script does it:
nibabel load (int16 -> float32), to the GPU, trilinear resampling to the
model's spacing on the GPU, lung window -1350..150 HU to 0..1, sliding
windows with 25 % overlap through the same network in PyTorch eager
(bench/model/reference.py, untrained weights: the work, not the answer, is
compared), blending on the GPU, probabilities resampled back to the scan's
grid on the GPU, threshold 0.5, nibabel save of the uint8 mask (.nii.gz).

Prints one JSON line: scans, wall seconds, scans per hour, seconds per stage
(load, to_device, resample, inference, restore, save) and the share of the
wall time the GPU computed (inference + resampling, timed with CUDA events).
"""

import argparse
import json
import pathlib
import sys
import time

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "model"))
from reference import PRESETS, MultiRNet  # noqa: E402


def windows(shape, patch, overlap):
    """Window origins along each axis covering `shape` (the last flush)."""
    out = []
    for n, p in zip(shape, patch):
        if n <= p:
            out.append([0])
            continue
        step = max(1, int(p * (1 - overlap)))
        starts = list(range(0, n - p + 1, step))
        if starts[-1] != n - p:
            starts.append(n - p)
        out.append(starts)
    return [(a, b, c) for a in out[0] for b in out[1] for c in out[2]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=sorted(PRESETS), default="small")
    ap.add_argument("--spacing", default="3.2,3.2,5.0", help="model spacing, mm (i,j,k)")
    ap.add_argument("--patch", default="96,96,16", help="window, voxels (i,j,k)")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    cfg = dict(PRESETS[args.model])
    patch_ijk = [int(v) for v in args.patch.split(",")]
    cfg["patch"] = patch_ijk
    spacing = [float(v) for v in args.spacing.split(",")]
    torch.manual_seed(0)
    net = MultiRNet(**cfg).to(device).eval()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    stages = dict.fromkeys(["load", "to_device", "resample", "inference", "restore", "save"], 0.0)
    gpu_ms = 0.0

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def gpu_timer():
        if not cuda:
            return None
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    t_all = time.perf_counter()
    for path in args.scans:
        t = time.perf_counter()
        img = nib.load(path)
        vol = np.asarray(img.dataobj, dtype=np.float32)  # (i, j, k)
        zooms = img.header.get_zooms()[:3]
        stages["load"] += time.perf_counter() - t

        t = time.perf_counter()
        x = torch.from_numpy(vol).to(device, non_blocking=False)
        sync()
        stages["to_device"] += time.perf_counter() - t

        t = time.perf_counter()
        e0 = gpu_timer()
        size = [max(1, round(n * z / s)) for n, z, s in zip(vol.shape, zooms, spacing)]
        # (i, j, k) -> N C D H W with D = k.
        x5 = x.permute(2, 1, 0)[None, None]
        r = F.interpolate(x5, size=[size[2], size[1], size[0]], mode="trilinear", align_corners=False)
        r = ((r + 1350.0) / 1500.0).clamp_(0.0, 1.0)
        sync()
        stages["resample"] += time.perf_counter() - t

        t = time.perf_counter()
        d, h, w = r.shape[2:]
        pk, pj, pi = patch_ijk[2], patch_ijk[1], patch_ijk[0]
        pad = [0, max(0, pi - w), 0, max(0, pj - h), 0, max(0, pk - d)]
        rp = F.pad(r, pad)
        acc = torch.zeros_like(rp)
        cnt = torch.zeros_like(rp)
        origins = windows(rp.shape[2:], (pk, pj, pi), args.overlap)
        with torch.inference_mode(), amp:
            for b in range(0, len(origins), args.batch):
                chunk = origins[b:b + args.batch]
                xb = torch.cat([rp[:, :, a:a + pk, c:c + pj, e:e + pi] for a, c, e in chunk])
                seg, _cls, _ = net(xb)
                p = torch.sigmoid(seg.float())
                for n, (a, c, e) in enumerate(chunk):
                    acc[:, :, a:a + pk, c:c + pj, e:e + pi] += p[n:n + 1]
                    cnt[:, :, a:a + pk, c:c + pj, e:e + pi] += 1
        prob = (acc / cnt.clamp_min(1))[:, :, :d, :h, :w]
        sync()
        stages["inference"] += time.perf_counter() - t

        t = time.perf_counter()
        back = F.interpolate(prob, size=[vol.shape[2], vol.shape[1], vol.shape[0]], mode="trilinear",
                             align_corners=False)
        mask = (back[0, 0] >= 0.5).to(torch.uint8).permute(2, 1, 0).contiguous().cpu().numpy()
        stages["restore"] += time.perf_counter() - t
        if e0 is not None:
            e1 = gpu_timer()
            e1.synchronize()
            gpu_ms += e0.elapsed_time(e1)

        t = time.perf_counter()
        name = pathlib.Path(path).name.removesuffix(".nii.gz").removesuffix(".nii")
        nib.save(nib.Nifti1Image(mask, img.affine), out_dir / f"{name}_mask.nii.gz")
        stages["save"] += time.perf_counter() - t
    wall = time.perf_counter() - t_all
    n = len(args.scans)
    print(json.dumps({
        "impl": "python-serial (nibabel + PyTorch eager)",
        "scans": n,
        "wall_s": round(wall, 3),
        "s_per_scan": round(wall / n, 3),
        "scans_per_hour": round(3600 * n / wall, 1),
        "stage_s_per_scan": {k: round(v / n, 3) for k, v in stages.items()},
        # Resampling, inference and restoring on the device, end to end:
        # an upper bound of the GPU's busy share.
        "gpu_busy_share": round(gpu_ms / 1000 / wall, 3) if cuda else None,
        "bf16": args.bf16,
        "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }))


if __name__ == "__main__":
    main()
