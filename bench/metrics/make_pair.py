"""Writes the mask pair of the segmentation-metrics benchmark.

    python bench/metrics/make_pair.py OUT_DIR [--seed 0] [--salt 0.02]

Writes OUT_DIR/truth.nii.gz and OUT_DIR/pred.nii.gz: uint8 masks of
512 x 512 x 300 voxels (i, j, k) at 0.7 x 0.7 x 1.25 mm, a chest CT's grid.
The truth holds about 600k lesion voxels in some forty lumpy blobs (each a
union of overlapping ellipsoids) spread through the volume, so the masks'
bounding box is most of the volume, as in a bilateral pneumonia. The
prediction is the truth perturbed lesion by lesion, like a decent model's
output: each blob shifted by up to two voxels, grown or shrunk by up to 15%,
one blob missed and three false-positive blobs added.

With `--salt F` a random fraction F of all voxels of the prediction is
also set (salt noise, the isolated false positives of a thresholded
probability map: `--salt 0.02` scatters about 1.6 million single voxels),
which multiplies the surface elements (each stray voxel has eight corners)
without changing the bounding box.

Needs numpy and nibabel (the project venv has both).
"""

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

DIMS = (512, 512, 300)
ZOOMS = (0.7, 0.7, 1.25)


def paint(vol, centre, radii):
    """Sets the voxels of one ellipsoid (voxel units), clipped to the volume."""
    lo = [max(0, int(np.floor(c - r))) for c, r in zip(centre, radii)]
    hi = [min(n, int(np.ceil(c + r)) + 1) for c, r, n in zip(centre, radii, vol.shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return
    i, j, k = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    r2 = ((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
    r2 = r2 + ((k - centre[2]) / radii[2]) ** 2
    vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= r2 <= 1.0


def lesion(rng, scale):
    """A lumpy blob: a few ellipsoids around a centre, radii in mm."""
    centre = np.array([rng.uniform(60, 452), rng.uniform(80, 432), rng.uniform(30, 270)])
    parts = []
    for _ in range(rng.integers(2, 5)):
        offset_mm = rng.normal(0, 4.0 * scale, 3)
        radii_mm = rng.uniform(4.0, 9.0, 3) * scale
        parts.append((centre + offset_mm / ZOOMS, radii_mm / ZOOMS))
    return parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--salt", type=float, default=0.0, help="fraction of voxels set at random in the prediction")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    lesions = [lesion(rng, rng.uniform(0.95, 1.85)) for _ in range(40)]

    truth = np.zeros(DIMS, bool)
    for parts in lesions:
        for c, r in parts:
            paint(truth, c, r)

    pred = np.zeros(DIMS, bool)
    missed = rng.integers(len(lesions))
    for n, parts in enumerate(lesions):
        if n == missed:
            continue
        shift = rng.integers(-2, 3, 3)
        grow = rng.uniform(0.85, 1.15)
        for c, r in parts:
            paint(pred, c + shift, r * grow)
    for _ in range(3):
        for c, r in lesion(rng, 0.7):
            paint(pred, c, r)

    if args.salt > 0:
        # A separate stream, so the smooth pair is the same with or without it.
        pred |= np.random.default_rng(args.seed + 1).random(DIMS) < args.salt

    args.out.mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(ZOOMS) + [1.0])
    affine[:3, 3] = (-179.0, -179.0, -370.0)
    for name, m in (("truth", truth), ("pred", pred)):
        img = nib.Nifti1Image(m.astype(np.uint8), affine)
        img.header.set_data_dtype(np.uint8)
        nib.save(img, args.out / f"{name}.nii.gz")
    print(f"truth {int(truth.sum())} voxels, pred {int(pred.sum())} voxels -> {args.out}")


if __name__ == "__main__":
    main()
