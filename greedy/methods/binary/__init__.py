"""Binary networks built one layer at a time without gradients (seed 003): ``--method binary``.

Every feature is a bit and every filter is a bit string. A layer turns each window of its
bit-packed input (3x3 patches of images, 1 x k windows of sequences) into one bit per filter
(agreeing bits >= threshold), optionally followed by pooling of the bits (2x2, or 1x2 on
sequences). The modules, in the order a run uses them:

- ``stats``: map/reduce statistics (patch samples, histograms, class sums, quantiles, medians);
- ``layers``: ``ImageLayer`` (thermometer-coded windows of images or series), ``ByteLayer``
  (one-hot bytes of text), ``ConvLayer`` (windows of bit maps, with the pooled input as colour
  feed), ``head_features``, ``parse_arch``;
- ``filters``: k-means and class-split filters, class partitions, thresholds;
- ``trainer``: ``BinaryTrainer``, the block trainer of the one layer-wise loop
  (``greedy.methods.layerwise.train_layerwise``), and the method object ``BINARY``;
- ``network``: ``BinaryNetwork``, the trained model (``greedy.modelfile.TrainedModel``), its
  file format and its consistency checks.

The head: the last bit map, flattened (``regions=0``) or as fractions of set bits in an RxR grid
of regions (popcounts), feeds a linear softmax classifier (``greedy.methods.classifier``) and a
gradient-free nearest-class-mean classifier (reported as ``ncm_accuracy``). Inference is popcounts
up to the head; the Numba kernels are in ``greedy.kernels.binary`` and ``greedy.kernels.bitops``.
"""
from greedy.methods.binary.layers import ByteLayer, ConvLayer, ImageLayer, head_features, parse_arch
from greedy.methods.binary.network import BinaryNetwork
from greedy.methods.binary.trainer import BINARY, Binary, BinaryTrainer

__all__ = ["BINARY", "Binary", "BinaryNetwork", "BinaryTrainer", "ByteLayer", "ConvLayer", "ImageLayer",
           "head_features", "parse_arch"]
