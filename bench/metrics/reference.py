"""Python baseline of the segmentation-metrics benchmark.

    python bench/metrics/reference.py TRUTH.nii.gz PRED.nii.gz [--tolerance-mm 1.0] [--no-medpy]

Times (1) loading both masks with nibabel, (2) DeepMind's surface-distance
(compute_surface_distances, then average distance, robust Hausdorff 95 and
100, surface overlap and surface Dice at the tolerance, volumetric Dice) and
(3) MedPy's `asd` and `hd95` when MedPy is installed, and prints one JSON
object with the times (s) and values. `multir metrics --json` on the same
files must give the surface-distance values; MedPy's surface is the set of
boundary voxels rather than surfels, so its numbers differ and are printed
for speed only.

Dependencies: numpy, scipy, nibabel (the project venv) and optionally
`medpy` (pip install medpy==0.5.2, which pulls SimpleITK). surface-distance
is imported from the copy vendored at tests/fixtures/metrics/reference
(DeepMind's GitHub version, Apache-2.0): the PyPI release 0.1 uses np.Inf,
which NumPy 2 removed.
"""

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/fixtures/metrics/reference"))
warnings.filterwarnings("ignore", category=DeprecationWarning)
import surface_distance as sd  # noqa: E402


def stored_decimal(x):
    """The decimal a float32 header value was written from, or x itself
    when x is not exactly a float32 (as multir's metrics read spacings)."""
    f = np.float32(x)
    return float(str(f)) if float(f) == x else x


def nullable(x):
    x = float(x)
    return x if math.isfinite(x) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("truth", type=Path)
    ap.add_argument("pred", type=Path)
    ap.add_argument("--tolerance-mm", type=float, default=1.0)
    ap.add_argument("--no-medpy", action="store_true")
    args = ap.parse_args()
    tol = args.tolerance_mm

    t0 = time.perf_counter()
    t_img, p_img = nib.load(args.truth), nib.load(args.pred)
    truth = np.asarray(t_img.dataobj) > 0.5
    pred = np.asarray(p_img.dataobj) > 0.5
    # Spacing as multir reads it: the lengths of the affine's columns, a
    # float32 header value as the decimal it was written from (0.7, not
    # 0.699999988079071).
    spacing = tuple(
        stored_decimal(float(x)) for x in np.sqrt((t_img.affine[:3, :3] ** 2).sum(axis=0))
    )
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        s = sd.compute_surface_distances(truth, pred, spacing)
        asd_t, asd_p = sd.compute_average_surface_distance(s)
        ov_t, ov_p = sd.compute_surface_overlap_at_tolerance(s, tol)
        values = {
            "dice": nullable(sd.compute_dice_coefficient(truth, pred)),
            "asd_truth_to_pred": nullable(asd_t),
            "asd_pred_to_truth": nullable(asd_p),
            "assd": nullable((asd_t + asd_p) / 2),
            "surface_overlap_truth": nullable(ov_t),
            "surface_overlap_pred": nullable(ov_p),
            "surface_dice": nullable(sd.compute_surface_dice_at_tolerance(s, tol)),
            "hd95": nullable(sd.compute_robust_hausdorff(s, 95)),
            "hausdorff": nullable(sd.compute_robust_hausdorff(s, 100)),
        }
    surface_distance_s = time.perf_counter() - t1

    out = {
        "shape": list(truth.shape),
        "spacing_mm": spacing,
        "voxels_truth": int(truth.sum()),
        "voxels_pred": int(pred.sum()),
        "tolerance_mm": tol,
        "load_s": load_s,
        "surface_distance_s": surface_distance_s,
        "surface_distance_total_s": load_s + surface_distance_s,
        "surface_distance": values,
    }
    if not args.no_medpy:
        try:
            from medpy.metric import binary
        except ImportError:
            out["medpy"] = None
        else:
            t2 = time.perf_counter()
            asd = binary.asd(pred, truth, voxelspacing=spacing)
            hd95 = binary.hd95(pred, truth, voxelspacing=spacing)
            out["medpy_s"] = time.perf_counter() - t2
            out["medpy"] = {"asd_pred_to_truth": float(asd), "hd95": float(hd95)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
