"""Binary layers: the image layer, the conv layer over bit maps, and the head's features.

A layer turns each 3x3 patch of its bit-coded input into one bit per filter::

    activation = number of patch bits that agree with the filter (9 * n_bits - hamming)
    feature bit = activation >= threshold

and may be followed by 2x2 pooling of the bits (``or``: any of 4, ``majority``: at least 2 of 4).

- **Image layer** (first): a 3x3xC patch of the uint8 image is coded to bits: with
  ``colour_norm`` each channel's patch mean is subtracted first (filters then see spatial
  structure, not colour), and each value v is thermometer coded against T levels, bit
  ``(j*C + c)*T + t`` = ``v[j, c] > levels[c, t]`` (j: pixel of the patch, row-major; the image is
  edge-padded).
- **Conv layer**: 3x3 patches of the previous layer's bit map (zero padding,
  ``greedy.kernels.bitops.binary_conv2d``). With colour levels, the original image, 2x2
  average-pooled down to the layer's resolution and thermometer coded, is appended to every
  pixel's bits, so colour removed by the first layer is available later.

Architecture specs: ``c<filters>`` per layer, optionally followed by ``or2`` or ``maj2``
(``parse_arch``); one layer's spec (``c128-or2``) is one block of the layer-wise loop.
"""
import re

import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import binary as kernels
from greedy.kernels.bitops import binary_conv2d, max_hamming, n_words, pack_bits, pool2x2_bits, unpack_bits
from greedy.methods.binary.stats import avg_pool_image, sample_windows

POOL_TOKENS = {"or2": "or", "maj2": "majority"}


def parse_arch(spec):
    """'c128-or2-c256-maj2' -> [(128, 'or'), (256, 'majority')]: filters per layer and the pooling after it."""
    out = []
    for token in str(spec).strip().split("-"):
        m = re.fullmatch(r"c(\d+)", token)
        if m and int(m[1]) > 0:
            out.append([int(m[1]), None])
        elif token in POOL_TOKENS and out and out[-1][1] is None:
            out[-1][1] = POOL_TOKENS[token]
        else:
            raise ConfigError(f"bad token {token!r} in binary architecture {spec!r}; use c<filters> layers, each "
                              f"optionally followed by or2 or maj2, e.g. c128-or2-c256-or2")
    return [tuple(t) for t in out]


def layer_spec(width, pool):
    """The spec of one layer: (128, 'or') -> 'c128-or2'."""
    return f"c{width}" + "".join(f"-{tok}" for tok, p in POOL_TOKENS.items() if p == pool)


def thermometer(values, levels):
    """values (..., C) real, levels (C, T) -> bits uint8 (..., C*T), bit c*T + t = values[..., c] > levels[c, t]."""
    bits = values[..., :, None] > levels
    return bits.reshape(values.shape[:-1] + (-1,)).astype(np.uint8)


def concat_bits(a, a_bits, b, b_bits):
    """Per-pixel concatenation of bit codes: a (..., ceil(a_bits/64)) then b (..., ceil(b_bits/64)) uint64.

    Returns uint64 (..., ceil((a_bits + b_bits)/64)): bits 0..a_bits-1 from a, then b's bits.
    """
    a_bits, b_bits = int(a_bits), int(b_bits)
    if a.shape[:-1] != b.shape[:-1]:
        raise ConfigError(f"cannot concatenate bit maps of shapes {a.shape} and {b.shape}")
    words = n_words(a_bits + b_bits)
    out = np.zeros(a.shape[:-1] + (words,), np.uint64)
    out[..., :a.shape[-1]] = a
    base, off = divmod(a_bits, 64)
    if off == 0:
        out[..., base:base + b.shape[-1]] = b
        return out
    for k in range(b.shape[-1]):  # over words, not pixels
        out[..., base + k] |= b[..., k] << np.uint64(off)
        if base + k + 1 < words:
            out[..., base + k + 1] |= b[..., k] >> np.uint64(64 - off)
    return out


class ImageLayer:
    """First layer: bit-coded 3x3 patches of uint8 images (N, C, H, W) against binary filters.

    levels (C, T) float64 thermometer levels; filters (F, ceil(9*C*T/64)) uint64 of
    ``n_code_bits = 9*C*T`` bits; thresholds (F,) float64; pool None, "or" or "majority".
    """

    def __init__(self, levels, colour_norm=True, filters=None, thresholds=None, pool=None):
        self.levels = np.ascontiguousarray(levels, np.float64)
        self.colour_norm = bool(colour_norm)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool

    @property
    def n_code_bits(self):
        return 9 * self.levels.size

    @property
    def n_filters(self):
        return len(self.filters)

    def padded(self, x):
        """uint8 (N, C, H, W) -> edge-padded NHWC uint8 (N, H+2, W+2, C)."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != self.levels.shape[0] \
                or x.dtype != np.uint8:
            raise ConfigError(f"the image layer expects uint8 images (N, {self.levels.shape[0]}, H, W), got "
                              f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', None)}")
        return np.pad(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")

    def sample_codes(self, x, n, rng):
        """Codes (n, k, w) uint64 of n random positions (k = 1) or pooling windows (k = 4) of images x
        (N, C, H, W), and their image indices (n,)."""
        nn, yy, xx = sample_windows(len(x), x.shape[2], x.shape[3], n, rng, self.pool is not None)
        k = yy.shape[1]
        out = np.empty((len(nn) * k, n_words(self.n_code_bits)), np.uint64)
        kernels.image_codes(self.padded(x), np.repeat(nn, k), yy.ravel(), xx.ravel(), self.levels,
                            self.colour_norm, out)
        return out.reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes, self.n_code_bits)

    def position_bits(self, x):
        """Patch bits per image over all positions."""
        return x.shape[2] * x.shape[3] * self.n_code_bits

    def position_bits_map(self, x):
        """Patch codes of every position of images x (N, C, H, W), unpacked: uint8 (N, H, W, n_code_bits)."""
        n, _, h, w = x.shape
        nn, yy, xx = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij"))
        out = np.empty((n * h * w, n_words(self.n_code_bits)), np.uint64)
        kernels.image_codes(self.padded(x), nn, yy, xx, self.levels, self.colour_norm, out)
        return self.unpack_codes(out).reshape(n, h, w, -1)

    def patches_of_map(self, m):
        """A map of per-position patch values (H, W, n_code_bits) is already in patch form."""
        return m

    def pack_filters(self, bits):
        return pack_bits(bits)[0]

    def filters_flat(self):
        return self.filters

    def forward(self, x):
        """uint8 images (N, C, H, W) -> bit map uint64 (N, H', W', ceil(F/64)) (H' = H//2 if pooled)."""
        padded = self.padded(x)
        out = np.empty((len(x), x.shape[2], x.shape[3], n_words(self.n_filters)), np.uint64)
        kernels.image_layer(padded, self.levels, self.colour_norm, np.ascontiguousarray(self.filters.T),
                            max_hamming(self.thresholds, self.n_code_bits), out)
        return pool2x2_bits(out, self.pool) if self.pool else out


class ConvLayer:
    """Binary 3x3 conv over a bit map (N, H, W, ceil(n_bits/64)) with filters (F, 9, ceil(n_bits/64)) uint64.

    ``colour_levels`` (C, T) float64 or None: when set, the original image pooled
    ``colour_pools`` times and thermometer coded is appended to the input bits
    (``n_bits`` counts them).
    """

    def __init__(self, n_bits, filters=None, thresholds=None, pool=None, colour_levels=None, colour_pools=0):
        self.n_bits = int(n_bits)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool
        self.colour_levels = None if colour_levels is None else np.asarray(colour_levels, np.float64)
        self.colour_pools = int(colour_pools)

    @property
    def n_code_bits(self):
        return 9 * self.n_bits

    @property
    def n_filters(self):
        return len(self.filters)

    @property
    def colour_bits(self):
        return 0 if self.colour_levels is None else self.colour_levels.size

    def inputs(self, prev, prev_bits, images):
        """This layer's input map: the previous bit map prev (N, H, W, ceil(prev_bits/64)), plus the pooled
        colour code of the uint8 images (N, C, H0, W0) if fed."""
        if self.colour_levels is None:
            return prev
        pooled = avg_pool_image(images, self.colour_pools).transpose(0, 2, 3, 1)
        colour, c_bits = pack_bits(thermometer(pooled, self.colour_levels))
        return concat_bits(prev, prev_bits, colour, c_bits)

    def sample_codes(self, m, n, rng):
        """Patch codes (n, k, 9*w) uint64 of n random positions (k = 1) or pooling windows (k = 4) of the
        input map m, and their image indices (n,)."""
        nn, yy, xx = sample_windows(m.shape[0], m.shape[1], m.shape[2], n, rng, self.pool is not None)
        k = yy.shape[1]
        out = np.empty((len(nn) * k, 9 * m.shape[3]), np.uint64)
        kernels.map_patches(m, np.repeat(nn, k), yy.ravel(), xx.ravel(), out)
        return out.reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes.reshape(len(codes), 9, -1), self.n_bits).reshape(len(codes), -1)

    def position_bits(self, m):
        return m.shape[1] * m.shape[2] * self.n_bits

    def position_bits_map(self, m):
        """Input bits per pixel (patches are formed later, from class means): uint8 (N, H, W, n_bits)."""
        return unpack_bits(m, self.n_bits)

    def patches_of_map(self, m):
        """Per-pixel values (H, W, n_bits) -> their 3x3 patches (zero padding) (H, W, 9*n_bits), code order."""
        h, w, _ = m.shape
        p = np.pad(m, ((1, 1), (1, 1), (0, 0)))
        return np.stack([p[j // 3:j // 3 + h, j % 3:j % 3 + w] for j in range(9)], axis=2).reshape(h, w, -1)

    def pack_filters(self, bits):
        return pack_bits(bits.reshape(len(bits), 9, self.n_bits))[0]

    def filters_flat(self):
        return self.filters.reshape(len(self.filters), -1)

    def forward(self, m):
        """Input map (N, H, W, w) -> bit map (N, H', W', ceil(F/64))."""
        out = binary_conv2d(m, self.filters, self.thresholds, self.n_bits)
        return pool2x2_bits(out, self.pool) if self.pool else out


def head_features(m, n_bits, regions=0, chunk=500):
    """Head input from the last bit map m (N, H, W, w): flattened bits uint8 (N, H*W*n_bits) for regions=0,
    else float32 (N, R*R*n_bits) fractions of set bits in an RxR grid of regions (popcounts per region)."""
    counts, area = head_counts(m, n_bits, regions, chunk)
    return counts if area is None else counts / area


def head_counts(m, n_bits, regions=0, chunk=500):
    """The integers behind ``head_features``: (flattened bits uint8 (N, H*W*n_bits), None) for regions=0, else
    (set bits per region and bit, uint8 (uint16 when a region has over 255 pixels) (N, R*R*n_bits), the
    regions' areas float32 (R*R*n_bits,)); the features are counts / area."""
    if not regions:
        return unpack_bits(m, n_bits).reshape(len(m), -1), None
    n, h, w, _ = m.shape
    if regions > min(h, w):
        raise ConfigError(f"regions={regions} exceeds the last map's size {h}x{w}")
    ys = np.linspace(0, h, regions + 1).astype(int)
    xs = np.linspace(0, w, regions + 1).astype(int)
    area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float32)
    out = np.empty((n, regions, regions, n_bits), np.uint8 if area.max() <= 255 else np.uint16)
    for i in range(0, n, chunk):
        bits = unpack_bits(m[i:i + chunk], n_bits)
        rows = np.add.reduceat(bits, ys[:-1], axis=1, dtype=np.uint16)
        out[i:i + chunk] = np.add.reduceat(rows, xs[:-1], axis=2, dtype=np.uint16)
    return out.reshape(n, -1), np.repeat(area.ravel(), n_bits)
