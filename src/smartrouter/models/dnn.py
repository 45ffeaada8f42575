"""Multi-head wide-and-deep Keras network: a linear path plus a shared trunk, one sigmoid head per processor, masked BCE.

Each head's logit is wide(x) + deep(x). The wide part is the logistic family's fit on the same
train rows (heads and global, stacked into one (d, P+1) matrix), held fixed; the deep part is a
ReLU trunk with one output per head whose output layer starts at zero, so training starts from
exactly the logistic model and the trunk learns what it adds. The starting point competes with
every epoch on the validation loss, so the network keeps the trunk only when it beats the
logistic model there. Why a fixed linear path rather than one trained jointly by Adam: on the
default world an Adam-trained linear path stayed short of the L-BFGS optimum within the epoch
budget (test AUC 0.7419 vs 0.7432), and per-head linear weights moved by Adam over-fit the
late-joining head (ADYEN AUC 0.65); the exact convex fit carries the hierarchical prior and the
sign bounds of logistic.py.

Sign-constrained inputs (data.MonotoneColumns: every processor's recent timeout, approval and
decline rates) reach the heads through the linear path only: the trunk never sees them. With
the linear path's sign bounds (logistic.SignedLinear), no score can rise with a processor's
recent timeout rate, by construction.

Only the head of the processor that handled an attempt receives loss for it (mask = one-hot of
the logged processor, times the sample weight); an extra head, trained on every attempt, is the
processor-agnostic prior that uncertain heads are shrunk toward. TensorFlow is imported only
inside training; the serving form is the trunk's dense weights plus the linear matrix in
weights.npz, run with numpy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from smartrouter.models.base import ApprovalModel
from smartrouter.models.data import P, ModelData, monotone_columns, processor_feature_columns

WEIGHTS_FILE = "weights.npz"
ACTIVATION = "relu"
# Steps per epoch above which the batch grows instead (see effective_batch_size).
MAX_STEPS = 90
# rows per batch when the network only reads (validation loss, predictions)
PREDICT_BATCH = 8192


def numpy_forward(X: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], wide: np.ndarray | None = None) -> np.ndarray:
    """Forward pass of the exported network in float64: sigmoid(trunk(X) + X @ wide), (n, P+1).

    The trunk is ReLU hidden layers then the linear heads; its first matrix has a zero row for
    every column that enters only through the wide path.
    """
    x = np.asarray(X, dtype=np.float64)
    h = x
    for W, b in layers[:-1]:
        h = np.maximum(h @ W + b, 0.0)
    W, b = layers[-1]
    z = h @ W + b
    if wide is not None:
        z = z + x @ wide
    return 1.0 / (1.0 + np.exp(-z))


def effective_batch_size(batch_size: int, n_rows: int) -> int:
    """``batch_size``, raised on big tables so an epoch is at most MAX_STEPS optimiser steps.

    On the default world's 725K train rows this gives ~8K-row batches: an epoch costs ~10 s on
    2 cores instead of ~25 s, with the same test AUC; small tables keep the configured size.
    """
    return max(int(batch_size), -(-int(n_rows) // MAX_STEPS))


def _masked_targets(data: ModelData, global_weight: float = 1.0, rows: Any = slice(None)) -> np.ndarray:
    """(n, 2(P+1)) of ``rows``: the label repeated for every head, then the loss mask (one-hot + global_weight) × weight."""
    y, proc, weight = data.y[rows], data.processor_idx[rows], data.weight[rows]
    n = len(y)
    t = np.repeat(y[:, None], P + 1, axis=1)
    m = np.zeros((n, P + 1), dtype=np.float32)
    m[np.arange(n), proc] = 1.0
    m[:, P] = global_weight
    m *= weight[:, None]
    return np.hstack([t, m]).astype(np.float32)


def batches(tf: Any, X: np.ndarray, batch_size: int, *, data: ModelData | None = None, global_weight: float = 1.0,
            seed: int | None = None) -> Any:
    """A tf.data pipeline of (X batch[, masked targets batch]) cut from the arrays as it is read.

    Keras given numpy arrays turns them into TensorFlow constants first: measured on a 511 MB X,
    fit held 1.1 GB more than the array itself, so on the default world's 975 MB train X the network
    held two more copies of it. Here only the batches in flight exist beside X. ``seed``: rows are
    shuffled by a fresh permutation every pass (epoch), drawn from one generator seeded once, so a
    run is repeatable; None keeps the rows' order (validation, prediction).
    """
    n, d = X.shape
    rng = None if seed is None else np.random.default_rng(seed)

    def gen() -> Any:
        order = None if rng is None else rng.permutation(n)
        for start in range(0, n, batch_size):
            if order is None:
                rows: Any = slice(start, min(start + batch_size, n))
            else:
                rows = np.sort(order[start : start + batch_size])  # same rows, read in memory order
            if data is None:
                yield X[rows]
            else:
                yield X[rows], _masked_targets(data, global_weight, rows)

    x_spec = tf.TensorSpec((None, d), tf.float32)
    spec = x_spec if data is None else (x_spec, tf.TensorSpec((None, 2 * (P + 1)), tf.float32))
    # a stated length: Keras then knows an epoch's steps instead of finding them by running out of data
    steps = -(-n // batch_size)
    return tf.data.Dataset.from_generator(gen, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(steps)).prefetch(2)


class DNNModel(ApprovalModel):
    """Wide-and-deep: shared trunk + linear path, P sigmoid heads (+1 global head), masked binary cross-entropy."""

    family = "dnn"
    # Small tables (a 2-week world) need the modest 128-64 trunk with dropout and few steps per
    # epoch, or the trunk overfits within two epochs; big tables get bigger batches from
    # ``effective_batch_size`` and the train notebook widens the trunk (dnn_hidden).
    defaults: dict[str, Any] = {
        "hidden": (128, 64),
        "dropout": 0.1,
        "l2": 1e-5,
        "learning_rate": 2e-3,
        "batch_size": 2048,
        "epochs": 20,
        "patience": 3,
        "threads": 0,
        "global_weight": 1.0,
        # wide=False: the plain trunk, every column in it and no timeout guarantee (comparisons
        # and the masked-loss test only); monotone=False: an unconstrained linear path and every
        # column in the trunk (only to show what the constraint buys)
        "wide": True,
        "monotone": True,
        # trunk_processor_features=False: the processors' own features (health, BIN history) reach
        # the heads through the linear path only, where each head reads its own processor's; the
        # shared trunk learns interactions of the payment's features. A trunk reading every
        # processor's features picks up time-trend proxies: on the default world it lost 0.001 AUC
        # to the logistic model on the WORLDPAY head; without them it gains 0.001 overall.
        "trunk_processor_features": False,
    }

    def _build(self, keras: Any, d: int) -> Any:
        from keras import ops

        reg = keras.regularizers.l2(float(self.params["l2"])) if self.params["l2"] else None
        inp = keras.Input(shape=(d,), name="x")
        h = inp
        if len(self.trunk_idx) < d:
            trunk_idx = self.trunk_idx
            h = keras.layers.Lambda(lambda x: ops.take(x, trunk_idx, axis=1), name="trunk_inputs")(h)
        for i, units in enumerate(self.params["hidden"]):
            h = keras.layers.Dense(int(units), activation=ACTIVATION, kernel_regularizer=reg, name=f"trunk_{i}")(h)
            if self.params["dropout"]:
                h = keras.layers.Dropout(float(self.params["dropout"]), name=f"dropout_{i}")(h)
        if self.params["wide"]:
            # the trunk's output starts at 0 and the heads' biases at the logistic intercepts:
            # the untrained network is the logistic model
            # (float32 even under mixed precision: the logistic logits must not lose digits)
            K0, b0 = self._linear_start
            z = keras.layers.Dense(P + 1, name="heads", kernel_initializer="zeros", dtype="float32",
                                   bias_initializer=keras.initializers.Constant(b0))(h)
            wide = keras.layers.Dense(P + 1, use_bias=False, trainable=False, name="wide", dtype="float32",
                                      kernel_initializer=keras.initializers.Constant(K0))(inp)
            z = keras.layers.Add(name="wide_and_deep", dtype="float32")([z, wide])
        else:
            z = keras.layers.Dense(P + 1, name="heads")(h)
        out = keras.layers.Activation("sigmoid", dtype="float32", name="proba")(z)
        return keras.Model(inp, out)

    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        import keras

        if int(self.params["threads"]) > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(self.params["threads"]))
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # TF already initialised in this process: keep its pools
        keras.utils.set_random_seed(int(self.params["seed"]))
        tf.config.experimental.enable_op_determinism()
        gpu = bool(tf.config.list_physical_devices("GPU"))
        self.device = "gpu" if gpu else "cpu"
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "float32")
        d = train.n_features
        # constrained columns (and, by default, every processor's own features) reach the heads
        # through the linear path only; without one every column goes through the trunk
        wide_only: set[int] = set()
        if self.params["wide"]:
            self._linear_start = self._fit_linear_start(train, valid)
            if self.params["monotone"]:
                wide_only = set(monotone_columns(self.feature_names, train.feature_scale).columns)
            if not self.params["trunk_processor_features"]:
                wide_only |= {j for cols in processor_feature_columns(self.feature_names).values() for j in cols}
        self.trunk_idx = np.array([j for j in range(d) if j not in wide_only], dtype=np.int64)
        try:
            model = self._build(keras, train.n_features)
            eps = 1e-7

            def masked_bce(y_true: Any, y_pred: Any) -> Any:
                t, m = y_true[:, : P + 1], y_true[:, P + 1 :]
                p = tf.clip_by_value(tf.cast(y_pred, tf.float32), eps, 1 - eps)
                bce = -(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))
                return tf.reduce_sum(m * bce, axis=1)

            model.compile(optimizer=keras.optimizers.Adam(float(self.params["learning_rate"])), loss=masked_bce)
            stop = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(self.params["patience"]), restore_best_weights=True
            )
            gw = float(self.params["global_weight"])
            batch = effective_batch_size(int(self.params["batch_size"]), len(train))
            # the starting point competes with every epoch: from the logistic start, training
            # only keeps the trunk if it lowers the validation loss
            start_w = model.get_weights()
            start_loss = float(model.evaluate(batches(tf, valid.X, PREDICT_BATCH, data=valid, global_weight=gw), verbose=0))
            hist = model.fit(
                batches(tf, train.X, batch, data=train, global_weight=gw, seed=int(self.params["seed"])),
                validation_data=batches(tf, valid.X, batch, data=valid, global_weight=gw),
                epochs=int(self.params["epochs"]),
                shuffle=False,  # the pipeline shuffles (Keras cannot shuffle a tf.data stream)
                callbacks=[stop],
                verbose=0,
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.history = {"loss": [float(v) for v in hist.history["loss"]], "val_loss": [float(v) for v in hist.history["val_loss"]],
                        "start_val_loss": start_loss}
        if min(self.history["val_loss"]) >= start_loss:
            model.set_weights(start_w)
            self.history["kept_start"] = True
        # The trained model's predictions come from a float32 Keras copy (the same weights as the
        # mixed-precision one), so the numpy serving form can match it to 1e-5.
        self.keras_model = self._build(keras, train.n_features)
        self.keras_model.set_weights([w.astype(np.float32) for w in model.get_weights()])
        names = [f"trunk_{i}" for i in range(len(self.params["hidden"]))] + ["heads"]
        dense = [self.keras_model.get_layer(n) for n in names]
        self.x_mean = train.X.mean(axis=0).astype(np.float32)  # baseline of per-decision contributions
        self.layers = [(l.get_weights()[0].astype(np.float32), l.get_weights()[1].astype(np.float32)) for l in dense]
        W0 = np.zeros((d, self.layers[0][0].shape[1]), dtype=np.float32)
        W0[self.trunk_idx] = self.layers[0][0]  # zero rows: the wide-only columns never reach the trunk
        self.layers[0] = (W0, self.layers[0][1])
        self.wide = None
        if self.params["wide"]:
            self.wide = self.keras_model.get_layer("wide").get_weights()[0].astype(np.float32)

    def _fit_linear_start(self, train: ModelData, valid: ModelData) -> tuple[np.ndarray, np.ndarray]:
        """(K (d, P+1), bias (P+1,)): the logistic family's coefficients, heads then global.

        ``self.linear_start`` (set by train_all) is used when it was fit on the same rows and
        features with the same sign constraints; otherwise a logistic model is fit here.
        """
        from smartrouter.models.logistic import LogisticModel

        lm = getattr(self, "linear_start", None)
        same = (lm is not None and getattr(lm, "feature_names", None) == self.feature_names
                and int(lm.n_train.sum()) == len(train) and bool(lm.params["monotone"]) == bool(self.params["monotone"]))
        if not same:
            lm = LogisticModel(seed=int(self.params["seed"]), monotone=bool(self.params["monotone"]), crosses=0)  # main effects only: what K reads
            lm.feature_names = self.feature_names
            lm._fit_core(train, valid)
        # a logistic model with learned crosses hands over its heads from before them (main effects only)
        W, b = getattr(lm, "main_effects", None) or (lm.W, lm.b)
        K = np.hstack([W.T, lm.Wg[:, None]]).astype(np.float32)
        return K, np.append(b, lm.bg).astype(np.float32)

    def _all_heads(self, X: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        X = np.ascontiguousarray(X, dtype=np.float32)
        if len(X) == 0:
            return np.zeros((0, P + 1))
        return np.asarray(self.keras_model.predict(batches(tf, X, PREDICT_BATCH), verbose=0), dtype=np.float64)

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        return self._all_heads(X)[:, :P]

    def _global_proba(self, X: np.ndarray) -> np.ndarray:
        return self._all_heads(X)[:, P]

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated per-processor probabilities; one network pass serves heads and the prior."""
        from smartrouter.models.base import blend_heads

        allh = self._all_heads(np.asarray(X, dtype=np.float32))
        return blend_heads(allh[:, :P], allh[:, P], self.blend)

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        arrays = {"x_mean": self.x_mean}
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = W, b
        if self.wide is not None:
            arrays["wide"] = self.wide
        with open(folder / WEIGHTS_FILE, "wb") as fh:
            np.savez(fh, **arrays)
        return {
            "weights": WEIGHTS_FILE,
            "n_layers": len(self.layers),
            "activation": ACTIVATION,
            "wide": self.wide is not None,
            "wide_only_columns": [int(j) for j in sorted(set(range(len(self.feature_names))) - set(self.trunk_idx.tolist()))],
            "shapes": [[list(W.shape), list(b.shape)] for W, b in self.layers],
            "device": getattr(self, "device", "cpu"),
            "history": self.history,
        }

    def global_importance(self, data: ModelData, sample: int = 3000) -> dict[str, float]:
        """Permutation importance: rise in masked log loss when one column is shuffled (numpy forward, a sample)."""
        from smartrouter.models import metrics

        rng = np.random.default_rng(int(self.params["seed"]))
        idx = rng.choice(len(data), size=min(sample, len(data)), replace=False)
        X, y, proc = data.X[idx], data.y[idx], data.processor_idx[idx]
        rows = np.arange(len(idx))
        base = metrics.logloss(y, numpy_forward(X, self.layers, self.wide)[rows, proc])
        imp = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            Xp = X.copy()
            Xp[:, j] = X[rng.permutation(len(X)), j]
            imp[j] = max(metrics.logloss(y, numpy_forward(Xp, self.layers, self.wide)[rows, proc]) - base, 0.0)
        imp = imp / imp.sum() if imp.sum() > 0 else imp
        return dict(zip(self.feature_names, map(float, imp)))
