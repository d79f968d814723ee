"""The per-block objectives of seed 000 as block trainers: ``--method aux``, ``cosine`` and ``kl``.

- ``aux``: the block, pooling, optional hidden convs and a linear softmax head are trained
  together with cross-entropy; the head is then discarded, or kept as the classifier after the
  last block (Belilovsky et al. 2019).
- ``cosine``: the block's pooled features are trained with the stable class-centroid cosine
  loss of ``greedy.nn.objectives.cosine_loss``.
- ``kl``: the block's pooled features are trained to maximise a Gaussian surrogate of the
  divergence between class-conditional distributions (``greedy.nn.objectives.gaussian_kl_loss``);
  the divergence reached is measured with the k-nearest-neighbour estimator
  (``greedy.cluster.divergence``).
"""

from greedy.cluster.divergence import class_kl_matrix
from greedy.kernels.cast import as_float32
from greedy.methods.base import LayerwiseMethod
from greedy.methods.blocks import augmentation, fit_block, head_layers, pooling_token
from greedy.methods.layerwise import ConvBlockTrainer
from greedy.nn import objectives
from greedy.nn.fit import accuracy, predict
from greedy.nn.model import Sequential, Stack

# features of at most this many training samples give the class centroids of a block's figures
CENTROID_SAMPLES = 10_000


class ObjectiveTrainer(ConvBlockTrainer):
    """A conv block trained on its cached input with a per-block objective (a subclass's ``train``)."""

    def augment(self, in_shape):
        """Random crops and flips of a block's input (N, C, H, W), random shifts of a sequence block's
        input (N, C, L), when ``config.augment``, else None.

        The shift scales with the map: up to ``augment_pad`` positions at input size, at least one
        on smaller maps. On later blocks the cached maps are shifted and mirrored, an
        approximation of augmenting the input (a conv commutes with shifts, not with mirroring).
        Sequences are never mirrored.
        """
        c = self.config
        if not c.augment:
            return None
        return augmentation(c, len(in_shape) - 1, max(1, round(c.augment_pad * in_shape[1] / self.image_shape[1])))

    def epoch_logger(self, layer, budget, monitor, model=None, x_eval=None, y_eval=None):
        """``on_epoch`` callback logging each epoch; with a model and evaluation data, also its head's
        accuracy, kept as ``.last_accuracy`` (``fit`` calls it after the last step, so that is the
        trained model's accuracy)."""
        n_epochs = budget[0] if budget[1] == "e" else None

        def on_epoch(epoch, loss, train_acc):
            fields = {"train_loss": loss}
            if model is not None and x_eval is not None:
                fields["head_accuracy"] = on_epoch.last_accuracy = accuracy(model, x_eval, y_eval, as_float32)
            monitor.log("train_layer", layer=layer, epoch=epoch, n_epochs=n_epochs, **fields)
        on_epoch.last_accuracy = None
        return on_epoch


class AuxTrainer(ObjectiveTrainer):
    trains_head = True

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        c = self.config
        head = Sequential(head_layers(block.out_shape, self.n_classes, c.aux_pool, c.aux_depth)) \
            .build(block.out_shape, rng)
        model = Stack(block, head)
        logger = self.epoch_logger(layer, budget, monitor, model, x_eval, y_eval)
        fit_block(model, x, y, c, budget, rng, label=f"aux layer {layer}", progress=monitor.verbose,
                  augment=self.augment(block.in_shape), on_epoch=logger)
        acc = logger.last_accuracy
        if acc is None and x_eval is not None:
            acc = accuracy(model, x_eval, y_eval, as_float32)
        return {"head_accuracy": acc, "head": head}


class FeatureObjectiveTrainer(ObjectiveTrainer):
    """Block + pooling trained with a loss on pooled features; reports nearest-centroid accuracy and kNN KL."""

    def loss(self, features, labels):
        """(loss, d loss / d features) of flat features (N, D) and labels (N,)."""
        raise NotImplementedError

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        c = self.config
        token = pooling_token(block.out_shape, c.aux_pool)
        model = Stack(block, Sequential.from_spec(token).build(block.out_shape, rng)) if token else block

        def loss_fn(f, yb, w):
            value, grad = self.loss(f.reshape(len(f), -1), yb)
            return value, grad.reshape(f.shape)

        fit_block(model, x, y, c, budget, rng, loss_fn=loss_fn, label=f"{c.method_name} layer {layer}",
                  progress=monitor.verbose, augment=self.augment(block.in_shape),
                  on_epoch=self.epoch_logger(layer, budget, monitor))
        if x_eval is None:
            return {}
        n = min(len(x), CENTROID_SAMPLES)
        f_train = predict(model, x[:n], as_float32).reshape(n, -1)
        f_eval = predict(model, x_eval, as_float32).reshape(len(x_eval), -1)
        centroids = objectives.class_centroids(f_train, y[:n], self.n_classes)
        info = {"head_accuracy": float((objectives.cosine_predict(f_eval, centroids) == y_eval).mean())}
        _, info["knn_kl_mean"] = class_kl_matrix(f_eval, y_eval, k=1, max_per_class=300)
        return info


class CosineTrainer(FeatureObjectiveTrainer):
    def loss(self, features, labels):
        return objectives.cosine_loss(features, labels, self.n_classes, temperature=self.config.temperature)


class KLTrainer(FeatureObjectiveTrainer):
    def loss(self, features, labels):
        return objectives.gaussian_kl_loss(features, labels, self.n_classes, variance=self.config.kl_variance)


class Aux(LayerwiseMethod):
    name = "aux"
    summary = ("Auxiliary classifiers (seed 000; Belilovsky et al. 2019): each conv block is trained with a small "
               "softmax head of its own on the frozen output of the blocks before it; the head is then dropped "
               "(or, on cifar10, kept as the final classifier).")
    trainer_class = AuxTrainer


class Cosine(LayerwiseMethod):
    name = "cosine"
    summary = ("Cosine class separation (seed 000): each block's pooled features are trained so that every "
               "sample is closer, in cosine similarity, to its own class centroid than to the others; a softmax "
               "classifier is trained on the last block.")
    trainer_class = CosineTrainer


class KL(LayerwiseMethod):
    name = "kl"
    summary = ("Class divergence (seed 000): each block's pooled features are trained to push the Gaussian models "
               "of the classes apart (a KL-divergence surrogate); the divergence reached is measured with a "
               "k-nearest-neighbour estimator, and a softmax classifier is trained on the last block.")
    trainer_class = KLTrainer


AUX, COSINE, KL_METHOD = Aux(), Cosine(), KL()
