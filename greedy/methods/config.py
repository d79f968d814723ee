"""Typed options of every method: one dataclass per method, and their defaults per dataset family.

Each field is one option. Its metadata gives the CLI flag's help, its group in ``train --help``
and its click type, so the CLI is generated from these classes (``greedy.cli``). The defaults
that depend on the data live in one table, ``FAMILY_DEFAULTS``; ``resolve`` merges dataclass
defaults, that table and the user's values, fills the derived fields (the block list, the
per-block budget) and checks everything once, at the edge.

Dataset families: ``mnist`` (one-channel images), ``cifar10`` (three-channel images), ``series``
(float sequences (C, L), e.g. ``ucr:<Name>``) and ``text`` (byte sequences (1, L), e.g. ``loghub:system``).
"""
import dataclasses
from dataclasses import dataclass, field

import click
import numpy as np

from greedy import validate
from greedy.errors import ConfigError

GROUPS = ("data", "model", "layer-wise", "patch bags", "binary", "optimisation", "output")


def option(default, help, group, type=None):
    """A config field with its CLI help, its ``train --help`` group and its click type."""
    kwargs = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, "group": group, "type": type}, **kwargs)


def like(cls, name, default):
    """The field ``name`` of ``cls`` with another default (same help, group and type)."""
    meta = cls.__dataclass_fields__[name].metadata
    return option(default, meta["help"], meta["group"], meta["type"])


POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE = click.FloatRange(min=0)
UNIT = click.FloatRange(0, 1)
OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
POOLS = ("gap", "gmp", "gapmax", "quadrant", "none")  # global average, global max, both (sequences),
# 2x2 regions (2 halves of a sequence)


@dataclass
class Config:
    """Options every method has."""
    seed: int = option(0, "Seed of every random stream of the run.", "output", int)
    tta: str = option(None, "Test-time augmentation: average the logits of each image and its mirror "
                            "image (flip), or not (none). Default: flip on cifar10, else none.", "model",
                      click.Choice(["none", "flip"]))

    def finish(self, family, n_classes):
        """Fill the fields derived from others; subclasses extend it."""

    def check(self):
        """Refuse values no click type can catch (also for library use)."""
        validate.integer(self.seed, "seed")
        validate.one_of(self.tta, "tta", ("none", "flip"))


@dataclass
class OptimConfig(Config):
    """Options of gradient training: end to end, or each block on its proxy problem."""
    optimizer: str = option("adam", "Optimiser of the network (or of each block).", "optimisation",
                            click.Choice(OPTIMIZERS))
    lr: float = option(2e-3, "Peak learning rate.", "optimisation", POSITIVE)
    schedule: str = option("onecycle", "Learning-rate schedule over the training steps.", "optimisation",
                           click.Choice(SCHEDULES))
    weight_decay: float = option(5e-4, "L2 weight decay.", "optimisation", NON_NEGATIVE)
    batch_size: int = option(128, "Mini-batch size.", "optimisation", POSITIVE_INT)
    augment: bool = option(False, "Random crops (and flips on cifar10) during training.", "optimisation", bool)
    augment_pad: int = option(4, "Largest random shift, in pixels at image size, of --augment.", "optimisation",
                              NON_NEGATIVE_INT)
    augment_flip: bool = option(True, "Mirror images in --augment.", "optimisation", bool)
    alternate_flips: bool = option(False, "Mirror a fixed half of the images in odd epochs and the other half in "
                                          "even ones (airbench's alternating flips), rather than each image at "
                                          "random every epoch.", "optimisation", bool)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy (0: none).", "optimisation",
                                    click.FloatRange(0, 1, max_open=True))


@dataclass
class E2EConfig(OptimConfig):
    arch: str = option("c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-drop0.4-fc{n_classes}",
                       "Architecture string, e.g. c32k3-relu-max2-fc10 ({n_classes} is filled in).", "model", str)
    epochs: float = option(3.0, "Training epochs (end to end); for layer-wise methods, epochs of every block.",
                           "optimisation", NON_NEGATIVE)
    time_budget: float = option(None, "Stop training after this many seconds.", "optimisation", POSITIVE)
    whiten_first: bool = option(False, "Fix the first conv to the whitened principal directions of its input "
                                       "patches, plus and minus (its filters: twice the directions kept).",
                                "model", bool)
    init_gain: float = option(1.0, "Scale of the initial weights of convs and dense layers, relative to He's "
                                   "(standard deviation sqrt(2 / fan_in)). A conv followed by batch norm learns "
                                   "at a rate inversely proportional to its weights' squared norm, so a smaller "
                                   "gain speeds up the first epochs.", "model", POSITIVE)
    eval_every: int = option(1, "Log the test accuracy after every K-th epoch but the last, whose figure is the "
                                "final test's (0: only that one). A pass over CIFAR-10's test set takes about "
                                "3 s on 2 cores.", "output", NON_NEGATIVE_INT)
    identity_init: bool = option(False, "Start the first min(F, C) filters of every conv as the identity: a 1 at "
                                        "the centre tap of their own input channel (airbench's dirac "
                                        "initialisation); the other filters keep their random start. With "
                                        "--whiten-first, every conv after the whitened one.", "model",
                                 bool)

    def finish(self, family, n_classes):
        self.arch = self.arch.format(n_classes=n_classes)
    lr: float = like(OptimConfig, "lr", 1e-3)
    schedule: str = like(OptimConfig, "schedule", "cosine")
    weight_decay: float = like(OptimConfig, "weight_decay", 0.0)


@dataclass
class LayerwiseConfig(OptimConfig):
    """Options of the layer-wise loop (``greedy.methods.layerwise``) and its final classifier."""
    arch: str = option(None, "Conv blocks, e.g. c128k3-bn-relu-max2-c256k3-bn-relu (the method adds "
                             "the classifier). Default: per method and dataset.", "model", str)
    layers: int = option(None, "Number of conv blocks (with --width, instead of --arch).", "model", POSITIVE_INT)
    width: int = option(None, "Filters per block (with --layers, instead of --arch).", "model", POSITIVE_INT)
    epochs: float = option(None, "Epochs of every block (shorthand for --layer-budget <E>e).", "optimisation",
                           NON_NEGATIVE)
    layer_budget: str = option("1e", "Budget per block: 2e (epochs), 90s (seconds), 4e*0.5 (geometric), "
                                     "3e,2e,1e (one per block, the last repeats).", "layer-wise", str)
    final_pool: str = option("quadrant", "Pooling of the last block's map before the final classifier.",
                             "layer-wise", click.Choice(POOLS))
    final_features: str = option("last", "The final classifier sees the last block's pooled map (last) or "
                                         "every block's, max-pooled to the same side (all).", "layer-wise",
                                 click.Choice(["last", "all"]))
    final_hidden: str = option("none", "Hidden layers of the final classifier, e.g. fc512-relu-drop0.4 "
                                       "(none: linear).", "layer-wise", str)
    final_classifier: str = option("retrain", "End with a classifier retrained on the frozen last block "
                                              "(retrain) or with the last block's own head (last-head).",
                                   "layer-wise", click.Choice(["retrain", "last-head"]))
    final_epochs: float = option(10.0, "Epochs of the final classifier.", "layer-wise", NON_NEGATIVE)
    final_lr: float = option(1e-2, "Learning rate of the final classifier (Adam, cosine).", "layer-wise", POSITIVE)
    final_batch_size: int = option(256, "Mini-batch size of the final classifier.", "layer-wise", POSITIVE_INT)
    final_weight_decay: float = option(5e-4, "Weight decay of the final classifier.", "layer-wise", NON_NEGATIVE)
    final_min_steps: int = option(2000, "Least number of steps of the final classifier (small training sets).",
                                  "layer-wise", NON_NEGATIVE_INT)
    finetune_epochs: float = option(0.0, "End-to-end fine-tune epochs after the last block.", "layer-wise",
                                    NON_NEGATIVE)
    finetune_lr: float = option(None, "Learning rate of the fine-tune (default: a tenth of --lr).", "layer-wise",
                                POSITIVE)
    blocks: list = option([], "Resolved block list (from --arch, --layers/--width or the defaults).", None)
    cache: str = option("auto", "Where each block's training-set input lives: in memory, on disk (a memory-mapped "
                                "file in the run folder), or auto: on disk when it needs more than 60 % of the "
                                "available memory.", "layer-wise", click.Choice(["auto", "memory", "disk"]))
    method_name = None
    default_width = 128

    def finish(self, family, n_classes):
        from greedy.methods.blocks import blocks_from_widths, split_blocks
        defaults = self.blocks
        if self.arch:
            self.blocks = split_blocks(self.arch)
        elif self.layers or self.width:
            self.blocks = blocks_from_widths(self.layers or len(defaults), self.width or self.default_width,
                                             **self.width_block_options())
        elif not self.blocks:
            self.blocks = list(defaults)
        if self.epochs is not None:
            self.layer_budget = f"{self.epochs:g}e"
            self.epochs = None

    def width_block_options(self):
        return {}

    def check(self):
        super().check()
        from greedy.methods.blocks import parse_budget
        from greedy.methods.classifier import classifier_layers
        parse_budget(self.layer_budget, len(self.blocks))
        classifier_layers(self.final_hidden, 2)
        if self.final_features == "all" and self.final_classifier == "last-head":
            raise ConfigError("--final-features all feeds a retrained classifier; it cannot go with last-head")


@dataclass
class AuxConfig(LayerwiseConfig):
    aux_depth: int = option(0, "Hidden conv layers in each auxiliary head.", "layer-wise", NON_NEGATIVE_INT)
    aux_pool: str = option("quadrant", "Pooling before the auxiliary head or objective (none: the whole map).",
                           "layer-wise", click.Choice(POOLS))
    method_name = "aux"


@dataclass
class CosineConfig(LayerwiseConfig):
    aux_pool: str = like(AuxConfig, "aux_pool", "quadrant")
    temperature: float = option(0.01, "cosine: softmax temperature of the class-centroid cosine loss.",
                                "layer-wise", POSITIVE)
    method_name = "cosine"


@dataclass
class KLConfig(LayerwiseConfig):
    aux_pool: str = like(AuxConfig, "aux_pool", "quadrant")
    kl_variance: str = option("full", "kl: Gaussian class models with the pooled within-class covariance (full), "
                                      "its diagonal (shared) or a diagonal variance each (class).", "layer-wise",
                              click.Choice(["full", "shared", "class"]))
    batch_size: int = like(OptimConfig, "batch_size", 512)
    method_name = "kl"


@dataclass
class PatchbagConfig(LayerwiseConfig):
    clusters: int = option(512, "k-means centroids per layer.", "patch bags", POSITIVE_INT)
    patch_sample: int = option(200_000, "Patches sampled to fit each dictionary.", "patch bags", POSITIVE_INT)
    regions: int = option(2, "Count codes in an RxR grid of regions (1: the whole image), or in R segments of "
                             "a sequence.", "patch bags", POSITIVE_INT)
    byte_codes: str = option("hash", "Codes of the windows of a byte sequence's first block: the byte k-gram "
                                     "hashed into --byte-buckets codes (hash) or the nearest k-means centroid "
                                     "(kmeans).", "patch bags", click.Choice(["hash", "kmeans"]))
    byte_buckets: int = option(8192, "Codes of --byte-codes hash.", "patch bags", POSITIVE_INT)
    image_clusters: int = option(0, "Train on this many prototypes per class (0: every image).", "patch bags",
                                 NON_NEGATIVE_INT)
    code_images: int = option(0, "Encode and train each block on the codes of this many training images, drawn "
                                 "at random for each block; every image is still propagated (0: all).",
                              "patch bags", NON_NEGATIVE_INT)
    mirrors: bool = option(False, "Add every training image's mirror image to the training set: each block's "
                                  "output and the final classifier see both, the dictionaries and codes only "
                                  "the originals (images only).", "patch bags", bool)
    activation: str = option("relu", "Activation of the default blocks.", "patch bags",
                             click.Choice(["tanh", "relu"]))
    colour_norm: bool = option(True, "Subtract each 3x3 patch's mean colour (first layer).", "patch bags", bool)
    final_mix: bool = option(False, "Train the last block's 1x1 mix (its conv in the whitened patch space) with "
                                    "the final classifier, on the real maps of every training image (images; "
                                    "--final-pool quadrant).", "patch bags", bool)
    final_mix_epochs: int = option(None, "Epochs of the final classifier that train the mix (--final-mix); then it "
                                         "is fixed and its pooled maps computed once (default: all).",
                                   "patch bags", NON_NEGATIVE_INT)
    final_mix_lr: float = option(1.0, "Multiplier of --final-lr for the mix (--final-mix).", "patch bags", POSITIVE)
    n_components: int = option(32, "Principal components kept of the whitened patches.", "patch bags",
                               POSITIVE_INT)
    whiten: str = option("pca", "Patch whitening.", "patch bags", click.Choice(["pca", "none"]))
    kmeans_iter: int = option(20, "k-means iterations per dictionary.", "patch bags", POSITIVE_INT)
    epochs_per_layer: float = option(None, "Epochs on codes per layer (shorthand for --layer-budget <E>e).",
                                     "patch bags", POSITIVE)
    layer_budget: str = like(LayerwiseConfig, "layer_budget", "10e")
    lr: float = like(OptimConfig, "lr", 3e-3)
    weight_decay: float = like(OptimConfig, "weight_decay", 1e-4)
    batch_size: int = like(OptimConfig, "batch_size", 256)
    final_hidden: str = like(LayerwiseConfig, "final_hidden", "fc512-relu-drop0.4")
    final_epochs: float = option(8.0, "Epochs of the final classifier.", "layer-wise", NON_NEGATIVE)
    final_lr: float = option(3e-3, "Learning rate of the final classifier (Adam, cosine).", "layer-wise", POSITIVE)
    method_name = "patchbag"
    default_width = 256

    def width_block_options(self):
        return {"activation": self.activation, "batchnorm": False}

    def finish(self, family, n_classes):
        if self.arch and "activation" in self.given:
            raise ConfigError("--activation sets the default blocks' activation; with --arch each block "
                              "names its own")
        if self.mirrors and family not in IMAGE_FAMILIES:
            raise ConfigError(f"--mirrors adds mirror images; the {family} samples are not images")
        if self.final_mix and (family not in IMAGE_FAMILIES or self.final_pool != "quadrant"
                               or self.final_classifier != "retrain"):
            raise ConfigError("--final-mix trains the last block's mix with the final classifier on image maps "
                              "pooled in quadrants: it needs images, --final-pool quadrant and a retrained "
                              "classifier")
        if not self.final_mix:
            if "final_mix_epochs" in self.given or ("final_mix_lr" in self.given and self.final_mix_lr != 1.0):
                raise ConfigError("--final-mix-epochs and --final-mix-lr say how --final-mix trains the mix; they "
                                  "need --final-mix")
            self.final_mix_epochs = None  # a family default without its --final-mix
        super().finish(family, n_classes)
        self.blocks = [b.format(act=self.activation) for b in self.blocks]
        if self.final_mix:
            from greedy.nn.activations import ReLU
            from greedy.nn.layers import Conv2d
            from greedy.nn.model import parse_spec
            last = parse_spec(self.blocks[-1]) if self.blocks else []
            if len(last) != 2 or not isinstance(last[0], Conv2d) or not isinstance(last[1], ReLU):
                raise ConfigError(f"--final-mix trains the mix of the last block's conv under its ReLU: that block "
                                  f"is a conv and a ReLU alone (e.g. c256k3-relu), got "
                                  f"{self.blocks[-1] if self.blocks else 'none'}; or give --no-final-mix")
        if self.epochs_per_layer is not None:
            self.layer_budget = f"{self.epochs_per_layer:g}e"
            self.epochs_per_layer = None

    given = frozenset()  # the options the user gave (``resolve``), not defaults


@dataclass
class BinaryConfig(Config):
    arch: str = option("c128-or2-c256", "Binary layers: c<filters> or c<filters>k<odd window width>, each "
                                        "optionally followed by or2 or maj2 (2x2 pooling of bits; 1x2 and or2 "
                                        "only on sequences).", "model", str)
    levels: int = option(4, "Thermometer levels per channel of the image layer (images and series).", "binary",
                         POSITIVE_INT)
    colour_levels: int = option(8, "Thermometer levels of the pooled image fed to later layers.", "binary",
                                POSITIVE_INT)
    colour_norm: bool = option(True, "Subtract each window's mean value per channel in the image layer.", "binary",
                               bool)
    colour_feed: bool = option(True, "Feed the pooled image to the layers after a pooling.", "binary", bool)
    threshold: str = option("quantile", "Feature bit threshold per filter.", "binary",
                            click.Choice(["median", "half", "quantile"]))
    on_fraction: float = option(0.25, "Share of sampled patches whose bit is on, with --threshold quantile.",
                                "binary", click.FloatRange(0, 1, min_open=True, max_open=True))
    binarize: str = option("median", "How k-means centroids become bit filters.", "binary",
                           click.Choice(["median", "half"]))
    split_fraction: float = option(0.5, "Share of supervised split filters.", "binary", UNIT)
    partitions: str = option("tree", "Class partitions of the split filters.", "binary",
                             click.Choice(["tree", "random"]))
    split_context: str = option("position", "Patches whose class means make a split filter.", "binary",
                                click.Choice(["global", "cluster", "position"]))
    split_keep: float = option(0.25, "Share of a split filter's bits that follow the class difference.",
                               "binary", click.FloatRange(0, 1, min_open=True))
    split_images: int = option(2_000, "Images sampled for position split filters.", "binary", POSITIVE_INT)
    patch_sample: int = option(30_000, "Patches sampled per layer.", "binary", POSITIVE_INT)
    kmeans_iter: int = option(15, "k-means iterations of the unsupervised filters.", "binary", POSITIVE_INT)
    shard_size: int = option(5_000, "Images per map/reduce shard.", "binary", POSITIVE_INT)
    regions: int = option(4, "Head features: set-bit fractions in an RxR grid (0: the flattened bits).", "binary",
                          NON_NEGATIVE_INT)
    epochs: float = option(10.0, "Epochs of the linear head.", "optimisation", NON_NEGATIVE)
    lr: float = option(1e-2, "Learning rate of the linear head (Adam, cosine).", "optimisation", POSITIVE)
    weight_decay: float = option(5e-4, "Weight decay of the linear head.", "optimisation", NON_NEGATIVE)
    batch_size: int = option(256, "Mini-batch size of the linear head.", "optimisation", POSITIVE_INT)
    final_min_steps: int = like(LayerwiseConfig, "final_min_steps", 2000)

    def check(self):
        super().check()
        from greedy.methods.binary.trainer import check_config
        check_config(self)
        if self.tta != "none":
            raise ConfigError(f"--tta {self.tta}: binary models do not support test-time augmentation")


# The defaults that depend on the dataset family, for each method. Everything else is a dataclass default.
_MNIST_LAYERWISE = {"blocks": ["c32k5-bn-relu-max2", "c64k3-bn-relu-max2", "c128k3-bn-relu"],
                    "layer_budget": "1e,1e,2e", "final_pool": "none", "augment": True, "augment_flip": False,
                    "augment_pad": 2}
_CIFAR_LAYERWISE = {"blocks": ["c128k3-bn-relu-max2", "c128k3-bn-relu-max2", "c256k3-bn-relu",
                               "c256k3-bn-relu-max2", "c512k3-bn-relu"], "layer_budget": "2e,2e,3e,2e,4e"}
# dilated later blocks (a wider receptive field at the same cost); the classifier sees every block's
# map (docs/sequences.md, "What matters")
# 8 epochs of mini-batches of 32: eight times the steps of 4 epochs of 128, at about twice the time;
# + 0.6 and + 1.1 points on ElectricDevices (seeds 0 and 1)
_SERIES_LAYERWISE = {"blocks": ["c64k7-bn-relu-max2", "c128k5d2-bn-relu-max2", "c128k3d4-bn-relu-max2"],
                     "layer_budget": "8e", "batch_size": 32, "final_pool": "quadrant", "final_features": "all"}
# two blocks, the first pooling 4 bytes: the second block's head is the best, at a quarter of the cost
_TEXT_LAYERWISE = {"blocks": ["emb16-c64k5-bn-relu-max4", "c128k5-bn-relu-max2"],
                   "layer_budget": "2e", "final_pool": "gmp", "aux_pool": "gmp"}
FAMILY_DEFAULTS = {
    "mnist": {
        # 99.1-99.2 % over five seeds within the 120 reference-seconds of issue 17 (perf/README.md, "Convolution,
        # dense, one training step"); 1.25 epochs of cosine: 98.96-99.00 %
        "e2e": {"epochs": 1.5, "lr": 2e-3, "schedule": "onecycle"},
        "aux": _MNIST_LAYERWISE, "cosine": _MNIST_LAYERWISE, "kl": _MNIST_LAYERWISE,
        # the patch mean (stroke or background) is kept; smaller dictionaries; the classifier sees every
        # block's map max-pooled to 3x3 (perf/README.md, "MNIST"); each block trains on the codes of
        # 20,000 images: the same accuracy over three seeds in three quarters of the time
        # (perf/README.md, "Codes of a subset"); codes in 3x3 regions: 99.21 % against 99.11 % over five seeds
        # (perf/README.md, "MNIST, default run")
        "patchbag": {"blocks": ["c32k3-{act}-max2", "c64k3-{act}-max2", "c128k3-{act}-max2"], "clusters": 128,
                     "n_components": 16, "colour_norm": False, "final_pool": "none", "final_features": "all",
                     "final_hidden": "fc256-relu-drop0.4", "final_epochs": 5.0, "final_lr": 2e-3,
                     "final_min_steps": 1000, "code_images": 20_000, "regions": 3},
    },
    "cifar10": {
        # the rival of issue 17's PyTorch reference, in greedy's kernels: an airbench-style 32-64-128 network
        # (each block a conv, 2x2 max pool, batch norm and ReLU, then a second conv), Nesterov, label
        # smoothing, flips and 2-pixel shifts; initial weights at PyTorch's scale, a sixth of He's variance,
        # with identity filters; 12 epochs, the test accuracy logged every third; batch 256 at a peak rate
        # of 0.2: 85.38 and 85.15 % (seeds 0 and 1) against 85.00 and 84.43 % at batch 512 and rate 0.4, in
        # 2-3 % more time a step (perf/README.md, "CIFAR-10 end to end")
        "e2e": {"arch": "c32k3-max2-bn-relu-c32k3-bn-relu-c64k3-max2-bn-relu-c64k3-bn-relu-c128k3-max2-bn-relu-"
                        "c128k3-bn-relu-max4-fc{n_classes}", "epochs": 12.0, "batch_size": 256,
                "optimizer": "nesterov", "lr": 0.2, "weight_decay": 5e-4, "schedule": "onecycle", "augment": True,
                "augment_pad": 2, "label_smoothing": 0.2, "init_gain": 0.408, "identity_init": True,
                "eval_every": 3},
        # the last block's own head beats a classifier retrained on its 2x2-pooled map (docs/layerwise.md)
        "aux": dict(_CIFAR_LAYERWISE, final_classifier="last-head"),
        "cosine": _CIFAR_LAYERWISE, "kl": _CIFAR_LAYERWISE,
        # the mirror images propagated for the classifier, which sees every block's map, for 16 epochs:
        # 74.60 % -> 78.20 % without test-time flips, seed 0; codes in 4x4 regions: about 0.9 points more
        # over two seeds (perf/README.md, "CIFAR-10, default run")
        # the last block's mix trained with the classifier on the real maps: 79.63-80.19 % against 78.66 %
        # without flips, seed 0 (perf/README.md, "The last block's mix trained with the classifier"); the mix
        # trained for 10 of the 16 epochs: as accurate over seeds 0 and 1, 3-7 s sooner
        "patchbag": {"blocks": ["c128k3-{act}-max2", "c256k3-{act}-max2", "c256k3-{act}"], "mirrors": True,
                     "final_features": "all", "final_epochs": 16.0, "regions": 4, "final_mix": True,
                     "final_mix_epochs": 10},
    },
    "series": {
        "e2e": {"arch": "c64k7-bn-relu-max2-c128k5-bn-relu-max2-c128k3-bn-relu-gap-fc{n_classes}"},
        # the classifier sees every block's channel means and maxima: + 2.7 points on ElectricDevices
        # (seed 0), + 0.8 on FordA; cosine loses 0.8 on ElectricDevices with them (docs/sequences.md)
        "aux": dict(_SERIES_LAYERWISE, final_pool="gapmax"), "cosine": _SERIES_LAYERWISE, "kl": _SERIES_LAYERWISE,
        # the window's level is kept; 20 code epochs; the classifier sees every block's two halves
        # (docs/sequences.md, "Patch bags: what matters")
        "patchbag": {"blocks": ["c128k5-{act}-max2", "c128k5-{act}-max2", "c128k3-{act}-max2"],
                     "colour_norm": False, "layer_budget": "20e", "final_pool": "quadrant",
                     "final_features": "all", "regions": 4},
        "binary": {"arch": "c128k7-or2-c256k5-or2"},
    },
    "text": {
        "e2e": {"arch": "c64k5-bn-relu-max2-c128k5-bn-relu-max2-c128k3-bn-relu-gap-fc{n_classes}"},
        "aux": _TEXT_LAYERWISE, "cosine": _TEXT_LAYERWISE, "kl": _TEXT_LAYERWISE,
        # two blocks, the first pooling 4 bytes; 5 code epochs; the classifier sees both blocks' maxima
        # (docs/sequences.md, "Patch bags: what matters")
        "patchbag": {"blocks": ["emb16-c64k5-{act}-max4", "c128k5-{act}-max2"], "layer_budget": "5e",
                     "final_pool": "gmp", "final_features": "all", "final_min_steps": 500, "regions": 1},
        # per-class position sums of byte codes take 0.7 GB a shard for loghub:event's 1,363 classes
        "binary": {"arch": "c128k3-or2-c256k5-or2", "colour_feed": False, "split_context": "global", "regions": 2},
    },
}

CONFIGS = {"e2e": E2EConfig, "aux": AuxConfig, "cosine": CosineConfig, "kl": KLConfig,
           "patchbag": PatchbagConfig, "binary": BinaryConfig}

IMAGE_FAMILIES = ("mnist", "cifar10")
# Datasets whose classes keep their meaning in a mirror image: test-time flips by default.
MIRROR_SYMMETRIC = ("cifar10",)


def family_of(in_shape, dtype=None):
    """Dataset family of samples of per-sample shape ``in_shape`` and ``dtype``.

    Images (C, H, W): one channel is mnist-like, more cifar10-like. Sequences (C, L): uint8 bytes
    are ``text``, floats ``series``; a sequence needs its dtype to tell them apart.
    """
    if len(in_shape) == 2 and dtype is not None:
        return "text" if np.dtype(dtype) == np.uint8 else "series"
    if len(in_shape) != 3:
        raise ConfigError(f"no method defaults for inputs of shape {tuple(in_shape)} and dtype {dtype}; "
                          "images are (C, H, W), sequences (C, L) with their dtype")
    return "mnist" if in_shape[0] == 1 else "cifar10"


def cli_fields():
    """{name: dataclasses.Field} over every method's options, for the CLI (first definition wins)."""
    out = {}
    for cls in CONFIGS.values():
        for f in dataclasses.fields(cls):
            if f.metadata.get("group") and f.name not in out:
                out[f.name] = f
    return out


def methods_with(name):
    return [m for m, cls in CONFIGS.items() if name in {f.name for f in dataclasses.fields(cls)}]


def resolve(method, family, n_classes, values=None, tta_default="none"):
    """The method's config for a dataset family: dataclass defaults, then ``FAMILY_DEFAULTS``, then
    ``values`` (a dict; None means unset). An option the method does not have is a ConfigError."""
    if method not in CONFIGS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(sorted(CONFIGS))}")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in (values or {}).items() if v is not None}
    for k in given:
        if k not in names:
            owners = methods_with(k)
            where = f" (an option of {', '.join(owners)})" if owners else ""
            raise ConfigError(f"--{k.replace('_', '-')} is not an option of method {method}{where}")
    merged = dict(FAMILY_DEFAULTS[family].get(method, {}), **given)
    merged.setdefault("tta", "none" if method == "binary" else tta_default)
    config = cls(**merged)
    if method == "patchbag":
        config.given = frozenset(given)
    config.finish(family, n_classes)
    config.check()
    return config


def to_dict(config):
    """Every field of a resolved config, JSON-ready (``config.json``)."""
    return dataclasses.asdict(config)
