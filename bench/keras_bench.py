#!/usr/bin/env python3
"""Keras (TensorFlow) peer of `fmnist bench` (see WORKLOADS.md).

    keras_bench.py {linear,mlp,cnn} [EPOCHS]     train a workload, a line per epoch, then JSON
"""
import argparse
import json
import os
import platform
import resource
import statistics
import time

THREADS = int(os.environ.get("PEER_THREADS", "2"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
from fmnist_data import load_arrays  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
from keras import layers  # noqa: E402

def load():
    """(train images, train labels, test images, test labels): images [N, 28, 28, 1] in [0, 1]."""
    arrays = load_arrays()
    images = lambda a: (a.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    return images(arrays[0]), arrays[1].astype(np.int64), images(arrays[2]), arrays[3].astype(np.int64)


def workload_model(name: str) -> keras.Model:
    """Logits out; Keras's default initialisation is Glorot-uniform with zero biases."""
    stack = [keras.Input((28, 28, 1))]
    if name == "linear":
        stack += [layers.Flatten(), layers.Dense(10)]
    elif name == "mlp":
        stack += [layers.Flatten(), layers.Dense(60, "relu"), layers.Dense(60, "relu"), layers.Dense(10)]
    else:
        stack += [layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"),
                  layers.MaxPooling2D(), layers.Flatten(), layers.Dense(128, "relu"), layers.Dropout(0.5),
                  layers.Dense(10)]
    return keras.Sequential(stack)


class EpochTimer(keras.callbacks.Callback):
    """Training seconds per epoch, evaluation excluded (it runs after, timed on its own)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=["linear", "mlp", "cnn"])
    parser.add_argument("epochs", nargs="?", type=int, help="epochs (W1, W2: 10; W3: 3)")
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.workload == "cnn" else 10)
    keras.utils.set_random_seed(42)
    x_train, y_train, x_test, y_test = load()
    model = workload_model(args.workload)
    if args.workload == "cnn":
        batch, optimizer = 128, keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7)
    else:
        batch, optimizer = 1024, keras.optimizers.SGD(learning_rate=0.05, momentum=0.95)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    timer, eval_secs = EpochTimer(), []
    for epoch in range(1, epochs + 1):
        fit = model.fit(x_train, y_train, batch_size=batch, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
        started = time.perf_counter()
        test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=batch, verbose=0)
        eval_secs.append(time.perf_counter() - started)
        print(f"epoch {epoch}: train {timer.seconds[-1]:.3f}s eval {eval_secs[-1]:.3f}s "
              f"loss {fit.history['loss'][0]:.4f} acc {fit.history['accuracy'][0]:.4f} "
              f"test_loss {test_loss:.4f} test_acc {test_acc:.4f}", flush=True)
    steady = statistics.median(timer.seconds[1:] or timer.seconds)
    print(json.dumps({
        "framework": "keras", "workload": args.workload, "epochs": epochs, "batch_size": batch,
        "sec_per_epoch_median": steady, "images_per_sec": len(x_train) / steady,
        "eval_sec": statistics.median(eval_secs[1:] or eval_secs), "test_acc": test_acc, "test_loss": test_loss,
        "train_secs": timer.seconds, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "threads": THREADS,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__,
                     "python": platform.python_version()}}))


if __name__ == "__main__":
    main()
