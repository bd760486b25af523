#!/usr/bin/env python3
"""Writes a large synthetic chest CT for the benchmarks.

    python bench/make_big_ct.py OUT.nii.gz [--seed 0]

int16 HU, shape (512, 512, 300) along i, j, k (300 axial slices of
512 x 512), voxel size 0.7 x 0.7 x 1.25 mm, RAS affine centred on the
volume. Air -1000, body ellipse ~40 HU with a fat layer, a rib-like bone rim
and a spine, two lungs ~-850 whose cross-section shrinks towards apex and
base, a few ground-glass blobs, Gaussian noise (sigma 20) everywhere.
Deterministic for a seed. Built slice by slice into a Fortran-ordered array
(each slice contiguous, the order NIfTI stores), so it takes seconds.
"""

import argparse
import json
import sys
import time

import nibabel as nib
import numpy as np

SHAPE = (512, 512, 300)
ZOOMS = (0.7, 0.7, 1.25)


def build(seed):
    rng = np.random.default_rng(seed)
    ni, nj, nk = SHAPE
    # World mm of voxel centres, origin at the volume centre.
    x = ((np.arange(ni, dtype=np.float32) - (ni - 1) / 2) * ZOOMS[0])[:, None]
    y = ((np.arange(nj, dtype=np.float32) - (nj - 1) / 2) * ZOOMS[1])[None, :]
    z = (np.arange(nk, dtype=np.float32) - (nk - 1) / 2) * ZOOMS[2]
    theta = np.arctan2(y, x)
    ribs = np.cos(14 * theta) > 0.1
    spine = (x**2 + (y + 85.0) ** 2) <= 18.0**2
    # Ground-glass blobs: (x, y, z, radius) in mm.
    blobs = [(-75.0, 5.0, 30.0, 14.0), (68.0, -25.0, -40.0, 10.0), (80.0, 20.0, 90.0, 8.0)]

    vol = np.empty(SHAPE, dtype=np.int16, order="F")
    for k in range(nk):
        zk = float(z[k])
        # The body narrows a little towards the neck.
        s = 1.0 - 0.08 * max(0.0, zk / 190.0)
        rr = (x / (170.0 * s)) ** 2 + (y / (125.0 * s)) ** 2
        hu = np.full((ni, nj), -1000.0, dtype=np.float32)
        hu[rr <= 1.0] = 40.0
        hu[(rr > 0.86) & (rr <= 1.0)] = -100.0  # subcutaneous fat
        hu[(rr > 0.72) & (rr <= 0.8) & ribs] = 700.0  # rib rim
        hu[spine] = 400.0
        # Lungs: ellipsoids centred 20 mm up, 150 mm tall.
        c = 1.0 - ((zk - 20.0) / 150.0) ** 2
        if c > 0:
            r = np.sqrt(c)
            for cx in (-72.0, 72.0):
                lung = ((x - cx) / (55.0 * r)) ** 2 + ((y + 5.0) / (85.0 * r)) ** 2 <= 1.0
                hu[lung] = -850.0
        for bx, by, bz, br in blobs:
            d2 = br**2 - (zk - bz) ** 2
            if d2 > 0:
                hu[((x - bx) ** 2 + (y - by) ** 2) <= d2] = -500.0
        hu += rng.standard_normal((ni, nj), dtype=np.float32) * 20.0
        np.clip(hu, -1024.0, 3071.0, out=hu)
        vol[:, :, k] = np.rint(hu)
    return vol


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output path, .nii.gz or .nii")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    vol = build(args.seed)
    t1 = time.perf_counter()
    aff = np.diag([*ZOOMS, 1.0])
    aff[:3, 3] = [-(n - 1) / 2 * z for n, z in zip(SHAPE, ZOOMS)]
    img = nib.Nifti1Image(vol, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.set_data_dtype(np.int16)
    img.to_filename(args.out)
    t2 = time.perf_counter()
    print(json.dumps({
        "out": args.out,
        "shape": list(SHAPE),
        "zooms": list(ZOOMS),
        "build_s": round(t1 - t0, 3),
        "write_s": round(t2 - t1, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
