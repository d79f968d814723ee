"""Binary layers: the image layer, the conv layer over bit maps, and the head's features.

A layer turns each window of its bit-coded input (3x3 on images; 1xk on sequences, which are
maps one row high) into one bit per filter::

    activation = number of window bits that agree with the filter (window * n_bits - hamming)
    feature bit = activation >= threshold

and may be followed by pooling of the bits in 2x2 windows on images, 1x2 on sequences (``or``:
any of them, ``majority``: at least 2 of 4, images only).

- **Image layer** (first, on uint8 images or float32 series): a window of C channels is coded to
  bits: with ``colour_norm`` each channel's window mean is subtracted first (filters then see
  shape, not level), and each value v is thermometer coded against T levels, bit
  ``(j*C + c)*T + t`` = ``v[j, c] > levels[c, t]`` (j: pixel of the window, row-major; the input is
  edge-padded).
- **Byte layer** (first, on text as uint8 bytes): every byte is one-hot coded (256 bits, byte
  0 is padding like any other byte) and the layer is a conv layer over that map, so a filter's
  activation counts the window's bytes it matches (and, for filters with several bits per
  position, the bytes it does not hold).
- **Conv layer**: windows of the previous layer's bit map (zero padding,
  ``greedy.kernels.bitops.binary_conv2d``). With colour levels, the original input, average-pooled
  down to the layer's resolution and thermometer coded, is appended to every pixel's bits, so
  level removed by the first layer is available later.

Architecture specs: ``c<filters>`` or ``c<filters>k<width>`` per layer (width 3 by default, odd;
a k x k window on images, 1 x k on sequences), optionally followed by ``or2`` or ``maj2``
(``parse_arch``); one layer's spec (``c128k5-or2``) is one block of the layer-wise loop.
"""
import re

import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import binary as kernels
from greedy.kernels.bitops import binary_conv2d, max_hamming, n_words, pack_bits, pool_bits, unpack_bits
from greedy.methods.binary.stats import avg_pool_image, sample_windows

POOL_TOKENS = {"or2": "or", "maj2": "majority"}
BYTE_BITS = 256  # one-hot bits of a byte


def parse_arch(spec):
    """'c128-or2-c256k5-maj2' -> [(128, 3, 'or'), (256, 5, 'majority')]: filters, window width and the pooling
    after each layer."""
    out = []
    for token in str(spec).strip().split("-"):
        m = re.fullmatch(r"c(\d+)(?:k(\d+))?", token)
        if m and int(m[1]) > 0 and (m[2] is None or int(m[2]) % 2 == 1):
            out.append([int(m[1]), int(m[2] or 3), None])
        elif token in POOL_TOKENS and out and out[-1][2] is None:
            out[-1][2] = POOL_TOKENS[token]
        else:
            raise ConfigError(f"bad token {token!r} in binary architecture {spec!r}; use c<filters> or "
                              f"c<filters>k<odd width> layers, each optionally followed by or2 or maj2, "
                              f"e.g. c128-or2-c256-or2")
    return [tuple(t) for t in out]


def layer_spec(width, k, pool):
    """The spec of one layer: (128, 3, 'or') -> 'c128-or2', (128, 5, None) -> 'c128k5'."""
    return f"c{width}" + ("" if k == 3 else f"k{k}") + "".join(f"-{tok}" for tok, p in POOL_TOKENS.items()
                                                                if p == pool)


def window_of(k, sequence):
    """The (kh, kw) window of width k: (1, k) on sequences, (k, k) on images."""
    return (1, int(k)) if sequence else (int(k), int(k))


def pool_shape_of(sequence):
    """Pooling windows: 1x2 on sequences, 2x2 on images."""
    return (1, 2) if sequence else (2, 2)


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


def one_hot_bytes(x):
    """Bytes uint8 (N, 1, 1, L) -> one-hot bit map uint64 (N, 1, L, 4): bit b of a position is set for byte b."""
    n, _, _, length = x.shape
    out = np.zeros((n, 1, length, BYTE_BITS // 64), np.uint64)
    b = x[:, 0, 0, :].astype(np.int64)
    np.put_along_axis(out[:, 0], (b >> 6)[..., None], (np.uint64(1) << (b & 63).astype(np.uint64))[..., None],
                      axis=2)
    return out


class ImageLayer:
    """First layer: thermometer-coded windows of uint8 images (N, C, H, W), or of float32 series one row high
    (N, C, 1, L), against binary filters.

    levels (C, T) float64 thermometer levels; filters (F, ceil(P*C*T/64)) uint64 of
    ``n_code_bits = P*C*T`` bits (P = kh*kw pixels of ``window``); thresholds (F,) float64; pool None,
    "or" or "majority", in ``pool_shape`` windows.
    """

    def __init__(self, levels, colour_norm=True, filters=None, thresholds=None, pool=None, window=(3, 3),
                 pool_shape=(2, 2)):
        self.levels = np.ascontiguousarray(levels, np.float64)
        self.colour_norm = bool(colour_norm)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool
        self.window, self.pool_shape = tuple(int(v) for v in window), tuple(pool_shape)

    @property
    def n_code_bits(self):
        return self.window[0] * self.window[1] * self.levels.size

    @property
    def n_filters(self):
        return len(self.filters)

    def padded(self, x):
        """Inputs (N, C, H, W) uint8 or float32 -> edge-padded channels-last (N, H+kh-1, W+kw-1, C)."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != self.levels.shape[0] \
                or x.dtype not in (np.uint8, np.float32):
            raise ConfigError(f"the image layer expects uint8 images or float32 series (N, {self.levels.shape[0]}, "
                              f"H, W), got {getattr(x, 'dtype', type(x).__name__)} of shape "
                              f"{getattr(x, 'shape', None)}")
        kh, kw = self.window
        return np.pad(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                      ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="edge")

    def inputs(self, prev, prev_bits, images):
        """The first layer's input map: the inputs themselves (there is no previous bit map)."""
        return images

    def codes_at(self, x, nn, yy, xx):
        """Window codes (n, ceil(n_code_bits/64)) uint64 centred on positions (nn, yy, xx) (n,) of inputs x."""
        out = np.empty((len(nn), n_words(self.n_code_bits)), np.uint64)
        kernels.image_codes(self.padded(x), nn, yy, xx, self.window[0], self.window[1], self.levels,
                            self.colour_norm, out)
        return out

    def sample_codes(self, x, n, rng):
        """Codes (n, k, w) uint64 of n random positions (k = 1) or pooling windows (k pixels) of inputs x
        (N, C, H, W), and their image indices (n,)."""
        nn, yy, xx = sample_windows(len(x), x.shape[2], x.shape[3], n, rng, self.pool and self.pool_shape)
        k = yy.shape[1]
        return self.codes_at(x, np.repeat(nn, k), yy.ravel(), xx.ravel()).reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes, self.n_code_bits)

    def position_bits(self, x):
        """Patch bits per image over all positions."""
        return x.shape[2] * x.shape[3] * self.n_code_bits

    def position_bits_map(self, x):
        """Window codes of every position of inputs x (N, C, H, W), unpacked: uint8 (N, H, W, n_code_bits)."""
        n, _, h, w = x.shape
        nn, yy, xx = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij"))
        return self.unpack_codes(self.codes_at(x, nn, yy, xx)).reshape(n, h, w, -1)

    def patches_of_map(self, m):
        """A map of per-position patch values (H, W, n_code_bits) is already in patch form."""
        return m

    def pack_filters(self, bits):
        return pack_bits(bits)[0]

    def filters_flat(self):
        return self.filters

    def forward(self, x):
        """Inputs (N, C, H, W) -> bit map uint64 (N, H', W', ceil(F/64)) (H', W' halved by a 2x2 pooling,
        W' by a 1x2 one)."""
        padded = self.padded(x)
        out = np.empty((len(x), x.shape[2], x.shape[3], n_words(self.n_filters)), np.uint64)
        kernels.image_layer(padded, self.window[0], self.window[1], self.levels, self.colour_norm,
                            np.ascontiguousarray(self.filters.T), max_hamming(self.thresholds, self.n_code_bits), out)
        return pool_bits(out, self.pool, self.pool_shape) if self.pool else out


class ConvLayer:
    """Binary kh x kw conv over a bit map (N, H, W, ceil(n_bits/64)) with filters (F, kh*kw, ceil(n_bits/64))
    uint64.

    ``colour_levels`` (C, T) float64 or None: when set, the original input pooled
    ``colour_pools`` times (in ``pool_shape`` windows, like this layer's own pooling) and thermometer
    coded is appended to the input bits (``n_bits`` counts them).
    """

    def __init__(self, n_bits, filters=None, thresholds=None, pool=None, colour_levels=None, colour_pools=0,
                 window=(3, 3), pool_shape=(2, 2)):
        self.n_bits = int(n_bits)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool
        self.colour_levels = None if colour_levels is None else np.asarray(colour_levels, np.float64)
        self.colour_pools = int(colour_pools)
        self.window, self.pool_shape = tuple(int(v) for v in window), tuple(pool_shape)

    @property
    def n_pixels(self):
        return self.window[0] * self.window[1]

    @property
    def n_code_bits(self):
        return self.n_pixels * self.n_bits

    @property
    def n_filters(self):
        return len(self.filters)

    @property
    def colour_bits(self):
        return 0 if self.colour_levels is None else self.colour_levels.size

    def inputs(self, prev, prev_bits, images):
        """This layer's input map: the previous bit map prev (N, H, W, ceil(prev_bits/64)), plus the pooled
        colour code of the inputs (N, C, H0, W0) if fed."""
        if self.colour_levels is None:
            return prev
        pooled = avg_pool_image(images, self.colour_pools, self.pool_shape).transpose(0, 2, 3, 1)
        colour, c_bits = pack_bits(thermometer(pooled, self.colour_levels))
        return concat_bits(prev, prev_bits, colour, c_bits)

    def sample_codes(self, m, n, rng):
        """Window codes (n, k, P*w) uint64 of n random positions (k = 1) or pooling windows (k pixels) of the
        input map m, and their image indices (n,)."""
        nn, yy, xx = sample_windows(m.shape[0], m.shape[1], m.shape[2], n, rng, self.pool and self.pool_shape)
        k = yy.shape[1]
        out = np.empty((len(nn) * k, self.n_pixels * m.shape[3]), np.uint64)
        kernels.map_patches(m, np.repeat(nn, k), yy.ravel(), xx.ravel(), self.window[0], self.window[1], out)
        return out.reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes.reshape(len(codes), self.n_pixels, -1), self.n_bits).reshape(len(codes), -1)

    def position_bits(self, m):
        return m.shape[1] * m.shape[2] * self.n_bits

    def position_bits_map(self, m):
        """Input bits per pixel (patches are formed later, from class means): uint8 (N, H, W, n_bits)."""
        return unpack_bits(m, self.n_bits)

    def patches_of_map(self, m):
        """Per-pixel values (H, W, n_bits) -> their windows (zero padding) (H, W, P*n_bits), code order."""
        h, w, _ = m.shape
        kh, kw = self.window
        p = np.pad(m, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        return np.stack([p[j // kw:j // kw + h, j % kw:j % kw + w] for j in range(kh * kw)],
                        axis=2).reshape(h, w, -1)

    def pack_filters(self, bits):
        return pack_bits(bits.reshape(len(bits), self.n_pixels, self.n_bits))[0]

    def filters_flat(self):
        return self.filters.reshape(len(self.filters), -1)

    def forward(self, m):
        """Input map (N, H, W, w) -> bit map (N, H', W', ceil(F/64))."""
        out = binary_conv2d(m, self.filters, self.thresholds, self.n_bits, self.window)
        return pool_bits(out, self.pool, self.pool_shape) if self.pool else out


class ByteLayer(ConvLayer):
    """First layer on text: a 1 x k binary conv over the one-hot bytes of uint8 inputs (N, 1, 1, L), its input
    map (``inputs``); filters (F, k, 4) uint64."""

    def __init__(self, filters=None, thresholds=None, pool=None, window=(1, 5)):
        super().__init__(BYTE_BITS, filters, thresholds, pool, window=window, pool_shape=pool_shape_of(True))

    def inputs(self, prev, prev_bits, images):
        """This layer's input map: the one-hot bytes (N, 1, L, 4) uint64 of images (N, 1, 1, L) uint8."""
        x = images
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:3] != (1, 1) or x.dtype != np.uint8:
            raise ConfigError(f"the byte layer expects uint8 bytes (N, 1, 1, L), got "
                              f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', None)}")
        return one_hot_bytes(x)


def max_regions(h, w):
    """The most regions an h x w map holds: min(h, w) on images, w on sequences (maps one row high)."""
    return w if h == 1 else min(h, w)


def region_grid(h, w, regions):
    """Rows and columns (rh, rw) of the head's grid of ``regions`` on an h x w map: R x R on images, 1 x R on
    sequences (maps one row high); ConfigError when it does not fit."""
    if regions > max_regions(h, w):
        raise ConfigError(f"regions={regions} exceeds the last map's size {h}x{w}")
    return (1 if h == 1 else regions), regions


def head_features(m, n_bits, regions=0, chunk=500):
    """Head input from the last bit map m (N, H, W, w): flattened bits uint8 (N, H*W*n_bits) for regions=0,
    else float32 (N, rh*rw*n_bits) fractions of set bits in a grid of regions (``region_grid``; popcounts per
    region)."""
    counts, area = head_counts(m, n_bits, regions, chunk)
    return counts if area is None else counts / area


def head_counts(m, n_bits, regions=0, chunk=500):
    """The integers behind ``head_features``: (flattened bits uint8 (N, H*W*n_bits), None) for regions=0, else
    (set bits per region and bit, uint8 (uint16 when a region has over 255 pixels) (N, rh*rw*n_bits), the
    regions' areas float32 (rh*rw*n_bits,)); the features are counts / area."""
    if not regions:
        return unpack_bits(m, n_bits).reshape(len(m), -1), None
    n, h, w, _ = m.shape
    rh, rw = region_grid(h, w, regions)
    ys = np.linspace(0, h, rh + 1).astype(int)
    xs = np.linspace(0, w, rw + 1).astype(int)
    area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float32)
    out = np.empty((n, rh, rw, n_bits), np.uint8 if area.max() <= 255 else np.uint16)
    for i in range(0, n, chunk):
        bits = unpack_bits(m[i:i + chunk], n_bits)
        rows = np.add.reduceat(bits, ys[:-1], axis=1, dtype=np.uint16)
        out[i:i + chunk] = np.add.reduceat(rows, xs[:-1], axis=2, dtype=np.uint16)
    return out.reshape(n, -1), np.repeat(area.ravel(), n_bits)
