"""Traces of JPEG compression in a CIFAR-10 copy: the luma quantisation steps and chroma subsampling.

``python perf/jpeg_trace.py [N]`` reads the first N (default 10000) training images of ``cifar10``
(``$GREEDY_DATA``), and prints JSON: for each of the 8 x 8 luma (Y) DCT frequencies of the JPEG grid,
the quantisation step its coefficients sit on (0 where nearly all of them are zero), the IJG quality
whose standard table matches those steps best, and the share of Y, Cb and Cr variance that lies in
detail within 2 x 2 pixel cells (4:2:0 subsampling stores one chroma sample per cell, so a decoder's
interpolation leaves little chroma detail). Steps are 0 (no lattice) on images that never went through JPEG.
"""
import json
import sys

import numpy as np
import scipy.fft

from greedy.data import load_dataset

# ITU-T T.81 Annex K, table K.1: the luminance quantisation table IJG scales by quality
LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]])
# JFIF's RGB -> YCbCr, Cb and Cr centred on zero
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def ycbcr(x):
    """uint8 images (N, 3, H, W) -> float64 (N, 3, H, W) Y - 128, Cb, Cr."""
    out = np.einsum("kc,nchw->nkhw", YCBCR, x.astype(np.float64))
    out[:, 0] -= 128
    return out


def block_dct(c):
    """Channel (N, H, W), H and W multiples of 8 -> (N * H/8 * W/8, 8, 8) DCT-II of each 8 x 8 block
    (orthonormal: JPEG's own scaling)."""
    n, h, w = c.shape
    blocks = c.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(-1, 8, 8)
    return scipy.fft.dctn(blocks, axes=(1, 2), norm="ortho")


def lattice_step(v, max_step=64, min_count=100, floor=2.0):
    """The largest step q <= max_step whose multiples the values v (M,) sit on: over the values of
    magnitude ``floor`` or more (the zeros left out), mean cos(2 pi v / q) above 0.4 (values off any
    lattice give about 0; a decoder's rounding, about 1 in the DCT domain, still leaves 0.45 at q = 5;
    twice the step scores near or below 0, as half the values sit on its odd multiples). 0 when fewer
    than ``min_count`` values are that large (the frequency is quantised to zero)."""
    big = v[np.abs(v) >= floor]
    if len(big) < min_count:
        return 0
    best = 0
    for q in range(2, max_step + 1):
        if np.cos(2 * np.pi * big / q).mean() > 0.4:
            best = q
    return best


def ijg_table(quality):
    """IJG's luma table at ``quality`` in 1..100 (int (8, 8))."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((LUMA_TABLE * scale + 50) // 100, 1, 255).astype(int)


def best_quality(steps):
    """The IJG quality whose table is nearest (sum of |log ratio|) to the nonzero entries of steps (8, 8)
    at the low frequencies (u + v <= 4: enough nonzero coefficients there to pin the step)."""
    seen = (steps > 0) & (np.add.outer(np.arange(8), np.arange(8)) <= 4)
    err = [np.abs(np.log(ijg_table(q)[seen] / steps[seen])).sum() for q in range(1, 101)]
    return int(np.argmin(err)) + 1


def detail_shares(c):
    """Share of each of Y, Cb, Cr's variance (around its mean) that lies within 2 x 2 cells of ``ycbcr``
    images c (N, 3, H, W) float, H and W even -> (3,) float, nan for a constant channel."""
    n, _, h, w = c.shape
    cells = c.reshape(n, 3, h // 2, 2, w // 2, 2)
    detail = cells - cells.mean(axis=(3, 5), keepdims=True)
    var = c.var(axis=(0, 2, 3))
    return (detail ** 2).mean(axis=(0, 2, 3, 4, 5)) / np.where(var > 0, var, np.nan)


def trace(x):
    """The JSON-ready report for uint8 images x (N, 3, H, W), H and W multiples of 8."""
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 8 or x.shape[3] % 8 or x.dtype != np.uint8:
        raise ValueError(f"jpeg_trace: need uint8 (N, 3, H, W) images, H and W multiples of 8; got {x.dtype} {x.shape}")
    c = ycbcr(x)
    coefs = block_dct(c[:, 0])
    steps = np.array([[lattice_step(coefs[:, u, v]) for v in range(8)] for u in range(8)])
    quality = best_quality(steps) if steps.max() > 1 else None
    shares = detail_shares(c)
    return {"images": len(x), "luma_steps": steps.tolist(), "ijg_quality": quality,
            "ijg_table": None if quality is None else ijg_table(quality).tolist(),
            "detail_share": {name: None if np.isnan(v) else float(v) for name, v in zip(("Y", "Cb", "Cr"), shares)}}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    data = load_dataset("cifar10", progress=False, quiet=True)
    print(json.dumps(trace(data.x_train[:n]), indent=1))
