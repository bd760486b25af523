#!/usr/bin/env python3
"""Reference side of the resample benchmark: nibabel + scipy.ndimage.zoom.

    python bench/reference_resample.py IN.nii.gz --spacing 0.8 0.8 1.5

--spacing is the target voxel size in mm along the file's own i, j, k axes
(nibabel's array axes), as `multir resample --spacing I,J,K`; "0.8,0.8,1.5"
is accepted too. The volume is loaded with nibabel (get_fdata as float32, so
the timing includes decompression and scaling) and resampled trilinearly
with scipy.ndimage.zoom(order=1) by the factors pixdim / target. Prints one
JSON line: {"load_s", "resample_s", "total_s", "out_shape", ...}.

zoom maps the corner voxel centres onto each other, while multir keeps voxel
0's centre and the step; output shapes agree (round(n * pixdim / target)),
values differ slightly near the far edges. This script is for timing; the
numerical cross-check lives in tests/fixtures/resample.
"""

import argparse
import json
import sys
import time


def parse_spacing(parts):
    vals = [float(v) for p in parts for v in p.split(",") if v.strip()]
    if len(vals) != 3 or not all(v > 0 and v != float("inf") for v in vals):
        raise SystemExit(f"--spacing needs three positive numbers, got {parts}")
    return vals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="a .nii or .nii.gz file")
    ap.add_argument(
        "--spacing", nargs="+", required=True, metavar="MM",
        help="target spacing along i, j, k (three numbers, or I,J,K)",
    )
    args = ap.parse_args()
    spacing = parse_spacing(args.spacing)

    # Imports stay outside the timings, as multir's start-up is outside its own.
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    t0 = time.perf_counter()
    img = nib.load(args.input)
    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise SystemExit(f"{args.input}: expected a 3D volume, got shape {img.shape}")
    data = img.get_fdata(dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    t1 = time.perf_counter()
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    factors = [z / s for z, s in zip(zooms, spacing)]
    out = ndimage.zoom(data, factors, order=1)
    t2 = time.perf_counter()
    print(json.dumps({
        "load_s": round(t1 - t0, 4),
        "resample_s": round(t2 - t1, 4),
        "total_s": round(t2 - t0, 4),
        "in_shape": list(data.shape),
        "in_spacing_mm": zooms,
        "out_shape": list(out.shape),
        "out_spacing_mm": spacing,
        "out_mean": float(out.mean(dtype=np.float64)),
        "tool": f"nibabel {nib.__version__} + scipy {__import__('scipy').__version__}",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
