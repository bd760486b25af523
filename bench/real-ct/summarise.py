"""Summarises a `multir run` over the real chest CTs of scripts/fetch-real-ct.

Usage: summarise.py DATA_DIR RUN_DIR

Prints, per scan, the class and probabilities, lesion volume (total, outside
the lung mask, within the tumour outline) and writes RUN_DIR/<scan>.png: two
axial slices side by side (the tumour's largest, and the one with the most
predicted lesion), lung window, tumour outline green, predicted lesion red.
The CT and the tumour label are read with SimpleITK, the predicted mask with
nibabel: both are put in the same (LPS, numpy k,j,i) voxel order.
"""

import csv
import json
import struct
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk


def png(path, rgb):
    """Writes an 8-bit RGB array (h, w, 3) as PNG with zlib alone."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 6))
    path.write_bytes(data + chunk(b"IEND", b""))


def edge(m):
    """Pixels of a 2D mask with a 4-neighbour outside it."""
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def panel(ct, tumour, pred, k):
    g = np.clip((ct[k] + 1350.0) / 1500.0, 0, 1) * 255
    rgb = np.repeat(g[..., None], 3, axis=2).astype(np.uint8)
    rgb[edge(tumour[k] > 0)] = (0, 220, 80)
    rgb[edge(pred[k] > 0)] = (255, 40, 40)
    return rgb


def lps_array(path):
    """A nibabel (RAS) volume as a numpy k,j,i array in LPS voxel order,
    matching SimpleITK's GetArrayFromImage for these LPS files."""
    img = nib.load(str(path))
    codes = nib.aff2axcodes(img.affine)
    data = np.asanyarray(img.dataobj)
    want = ("L", "P", "S")
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(codes), nib.orientations.axcodes2ornt(want)
    )
    data = nib.orientations.apply_orientation(data, ornt)
    return np.transpose(data, (2, 1, 0))


def main():
    data, run = Path(sys.argv[1]), Path(sys.argv[2])
    scans = pd.read_parquet(run / "scans.parquet").set_index("scan_id")
    with open(data / "manifest.csv") as f:
        entries = list(csv.DictReader(f))
    out = []
    for e in entries:
        sid = e["scan_id"]
        row = scans.loc[sid]
        rec = {
            "scan": sid,
            "status": row["status"],
            "class": row["predicted_class"],
            "p_covid": row.get("prob_covid"),
            "p_cap": row.get("prob_cap"),
            "p_healthy": row.get("prob_healthy"),
            "lung_ml": row["lung_volume_ml"],
            "lesion_ml": row["lesion_volume_ml"],
            "lesion_outside_lung_mask_ml": row["lesion_outside_lungs_ml"],
        }
        if row["status"] == "ok":
            img = sitk.ReadImage(str(data / e["image"]))
            ct = sitk.GetArrayFromImage(img).astype(np.float32)
            tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(data / e["tumour_label"])))
            direction = np.array(img.GetDirection()).reshape(3, 3)
            if not np.allclose(direction, np.eye(3)):
                sys.exit(f"{sid}: expected an axis-aligned LPS scan, direction {direction}")
            pred = lps_array(run / "masks" / f"{sid}.nii.gz")
            if pred.shape != ct.shape:
                sys.exit(f"{sid}: mask shape {pred.shape} != CT {ct.shape}")
            voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
            t = tumour > 0
            p = pred > 0
            rec["tumour_ml"] = float(t.sum() * voxel_ml)
            rec["lesion_in_tumour_ml"] = float((t & p).sum() * voxel_ml)
            rec["tumour_covered_pct"] = float(100.0 * (t & p).sum() / max(t.sum(), 1))
            kt = int(np.argmax(t.sum(axis=(1, 2))))
            kp = int(np.argmax(p.sum(axis=(1, 2)))) if p.any() else kt
            # LPS rows run anterior to posterior and columns right to left:
            # already the radiological view (anterior up, patient's right on
            # the image's left).
            views = [panel(ct, t, p, k) for k in (kt, kp)]
            gap = np.zeros((views[0].shape[0], 8, 3), np.uint8)
            png(run / f"{sid}.png", np.concatenate([views[0], gap, views[1]], axis=1))
            rec["slices"] = [kt, kp]
            rec["png"] = str(run / f"{sid}.png")
        out.append(rec)
    for r in out:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
