"""End-to-end training with back-propagation through the whole network: the baseline."""
import numpy as np

from greedy.nn.augment import random_crop_flip
from greedy.nn.model import build_model
from greedy.nn.optim import make_optimizer
from greedy.nn.fit import accuracy, fit

TUTORIAL_CNN = "c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-drop0.4-fc{n_classes}"

DEFAULTS = {"arch": TUTORIAL_CNN, "epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 1e-3,
            "schedule": "cosine", "weight_decay": 0.0, "augment": False}


def train_e2e(data, normalizer, opts, run):
    """Train the architecture ``opts["arch"]`` end to end; returns (model, extra summary fields)."""
    o = dict(DEFAULTS, **{k: v for k, v in opts.items() if v is not None})
    n_classes = len(data.class_names)
    model = build_model(o["arch"].format(n_classes=n_classes), data.x_train.shape[1:], n_classes, o["seed"])
    rng = np.random.default_rng(o["seed"])
    opt = make_optimizer(o["optimizer"], o["lr"], o["schedule"], o["weight_decay"])
    augment = random_crop_flip if o["augment"] else None

    def on_epoch(epoch, loss, train_acc):
        test_acc = accuracy(model, data.x_test, data.y_test, normalizer)
        run.log("epoch", epoch=epoch, train_loss=loss, train_accuracy=train_acc, test_accuracy=test_acc)

    fit(model, data.x_train, data.y_train, opt, epochs=o["epochs"], batch_size=o["batch_size"],
        prepare=normalizer, augment=augment, rng=rng, time_budget=o.get("time_budget"),
        on_epoch=on_epoch, progress=run.verbose, label="e2e")
    return model, {"arch": model.spec(), "epochs": o["epochs"]}
