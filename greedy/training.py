"""``run_training``: one method trained into one run folder (``greedy.runs``), as ``cli.py train`` does.

``cli.py train``, ``compare`` and ``sweep`` all train through it: it resolves the method's config
(or, to resume, checks the recorded one), opens the run folder, trains with SIGINT and SIGTERM
turned into a stop at the next checkpoint, measures the test accuracy, and writes the model and
the summary (with the process's peak resident memory).
"""
import gc
import os
import signal

from greedy.checkpoint import fingerprint, writing
from greedy.kernels.compile_time import CompileTimer
from greedy.memory import peak_rss_bytes
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.nn.fit import label_accuracy
from greedy.runs import Run, RunInterrupted, resolve_recorded, resume_hint, stop_on_signals


def run_training(method_name, data, dataset, values, out, threads, data_dir=None, verbose=True, exist="refuse",
                 record=None):
    """Train ``method_name`` on loaded ``data`` with option ``values`` (a dict; None = unset) into run
    folder ``out``; returns the summary dict.

    ``exist``: what to do when ``out`` holds a run: "refuse" (ConfigError), "replace" (start afresh)
    or "resume" (continue from its checkpoint; ``values`` are then the options it recorded).
    ``record``: more entries for config.json. SIGINT and SIGTERM stop the run at its next
    checkpoint (RunInterrupted)."""
    method = METHODS[method_name]
    n_classes = len(data.class_names)
    tta_default = "flip" if dataset in configs.MIRROR_SYMMETRIC else "none"
    family = configs.family_of(data.x_train.shape[1:], data.x_train.dtype)
    config = None if exist == "resume" else method.resolve(family, n_classes, values, tta_default)
    options = values if config is None else configs.to_dict(config)
    run = Run(out, method_name, dataset, dict({"seed": options.get("seed"), "threads": threads, "data_dir": data_dir,
                                               "n_train": len(data.x_train), "n_test": len(data.x_test),
                                               "options": options}, **(record or {})),
              verbose=verbose, exist=exist)
    try:
        if config is None:  # checked once the folder is ours (locked)
            config = resolve_recorded(method, family, n_classes, values, tta_default, run.path("config.json"))
        run.expect_data(fingerprint(data.x_train, data.y_train))
        with stop_on_signals(run):
            run.start()
            with CompileTimer() as compiled:
                model, extra = method.fit(data.x_train, data.y_train, n_classes, config, run,
                                          (data.x_test, data.y_test))
            train_seconds = run.seconds()
            model.class_names = list(data.class_names)
            plain_logits = model.predict_logits(data.x_test, tta="none")
            test_acc = label_accuracy(plain_logits, data.y_test)
            extra = dict(extra, test_accuracy_without_tta=test_acc)
            if model.tta == "flip":  # one more pass, over the mirror images; the model then predicts as evaluate will
                from greedy.nn.network import flip_average, mirror
                test_acc = label_accuracy(flip_average(plain_logits, model.predict_logits(mirror(data.x_test),
                                                                                          tta="none")), data.y_test)
            run.log("test", test_accuracy=test_acc, test_accuracy_without_tta=extra["test_accuracy_without_tta"])
            with writing(run.path("model.npz")):
                model.save(run.path("model.npz"), {"method": method_name, "dataset": dataset})
            if run.saved is not None:
                extra["resumed_after"] = run.saved.progress()
            return run.finish(dict({"test_accuracy": test_acc, "train_seconds": round(train_seconds, 3),
                                    "compile_seconds": round(compiled.seconds, 3),
                                    "n_parameters": model.n_parameters(), "seed": config.seed, "threads": threads,
                                    "tta": model.tta, "peak_memory_mb": round(peak_rss_bytes() / 2**20, 1)},
                                   **extra))
    except (KeyboardInterrupt, Exception) as error:
        # after a second SIGINT, the code it interrupted may raise its own error instead (llvmlite mid-compile)
        if not isinstance(error, KeyboardInterrupt) and (not run.stop_at_once or isinstance(error, RunInterrupted)):
            raise
        message = f"SIGINT: stopped at once, with {run.progress()} in the last checkpoint; {resume_hint(out)}"
    finally:
        run.close()
    # Out of the except block the interrupted frames are unreferenced: objects they left half-built
    # (llvmlite's, mid-compile) are finalised now, so what their finalisers print comes before the message.
    gc.collect()
    raise RunInterrupted(signal.SIGINT, message)
