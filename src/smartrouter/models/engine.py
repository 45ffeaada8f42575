"""Where XGBoost's boosting runs: in this process, or on a Dask cluster (``SMARTROUTER_TRAIN_ENGINE``).

``fit_booster`` is what the xgb family calls instead of ``xgboost.train``. Either engine returns a
plain ``xgboost.Booster`` and the ``evals_result`` curves ``xgboost.train`` gives, so the artifact,
its numpy compilation (xgb_numpy) and serving do not know which engine trained it.

- ``local`` (default): one ``xgboost.QuantileDMatrix`` fed batch by batch through an
  ``xgboost.DataIter``. The float rows are never concatenated: XGBoost reads the batches twice
  (sketch, then bin) and keeps only the ~1-byte-per-value bins, so peak memory is about one batch
  plus the bins. A numpy ``QuantileDMatrix`` is itself a one-batch iterator inside XGBoost, and
  the per-feature sketch is fed row after row either way, so the cuts and the trees are the same
  as on the concatenated arrays (tests/test_engine.py checks identical dumps).
- ``dask``: ``xgboost.dask`` (XGBoost's own distributed training) on a ``dask.distributed``
  cluster: ``SMARTROUTER_DASK_SCHEDULER`` names an existing one; unset, a LocalCluster of
  ``SMARTROUTER_DASK_WORKERS`` one-thread worker processes is started here and closed after.
  Each batch is sent to one worker (round robin) and becomes one chunk of a dask array, so the
  driver holds one batch at a time; the workers sketch and bin their chunks and boost together
  (histograms summed across workers each round).

Batches: ``train`` and ``valid`` are *re-iterable* collections of ``(X, y, weight)`` numpy
batches (X float32 2-D, y and weight 1-D of the same length; weight may be None in every batch).
Every ``iter(train)`` must start again from the first batch, because the local engine reads them
twice: a list of batches (``batches_of`` cuts arrays into one without copying), or a
``BatchSource`` over a function that opens a fresh iterator (e.g. reads parquet row groups) each
time. A one-shot generator is refused with an error rather than silently read once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from smartrouter.config import DASK_INSTALL_HINT, Settings, load_settings
from smartrouter.errors import ConfigError

if TYPE_CHECKING:
    import xgboost as xgb

Batch = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]

# A LocalCluster's workers together may use this share of the machine's memory: the driver
# process beside them holds the batch it is sending and the returned booster, and on a shared
# node the rest belongs to others. Dask spills scattered batches to disk past 60 % of a worker's
# limit and restarts a worker at 95 %, so the limit bounds the cluster, not just warns.
LOCAL_CLUSTER_MEMORY_SHARE = 0.5


class BatchSource:
    """A re-iterable over batches: each ``iter()`` calls ``open_batches()`` for a fresh iterator.

    Use it for batches read lazily (parquet row groups, a day at a time) so that only the batch
    being read is in memory: ``BatchSource(lambda: read_day_batches(folder))``.
    """

    def __init__(self, open_batches: Callable[[], Iterator[Batch]]):
        self.open_batches = open_batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.open_batches())


def batches_of(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, *, rows: int) -> list[Batch]:
    """Arrays cut into batches of ``rows`` rows (views: nothing is copied)."""
    if rows < 1:
        raise ValueError(f"rows={rows} must be at least 1")
    return [
        (X[i : i + rows], y[i : i + rows], None if weight is None else weight[i : i + rows]) for i in range(0, len(X), rows)
    ]


def fit_booster(
    params: dict[str, Any],
    train: Iterable[Batch],
    valid: Iterable[Batch] | None,
    *,
    num_boost_round: int,
    early_stopping_rounds: int,
    settings: Settings | None = None,
) -> tuple[xgb.Booster, dict[str, dict[str, list[float]]]]:
    """Boost on the batches with the engine ``settings.train_engine`` names; returns (booster, evals_result).

    Like ``xgboost.train(params, dtrain, num_boost_round, evals=[(train, "train"), (valid,
    "valid")], early_stopping_rounds=...)``: early stopping watches "valid" (the last eval), the
    booster keeps every round it built with ``best_iteration`` set, and evals_result holds
    ``{"train": {metric: [...]}, "valid": {metric: [...]}}``. Without ``valid`` there is no early
    stopping and only the "train" curve. ``params`` reach every worker unchanged (a
    ``"device": "cuda"`` needs GPUs there).
    """
    settings = settings or load_settings()
    _require_reiterable(train, "train")
    if valid is not None:
        _require_reiterable(valid, "valid")
    if settings.train_engine == "dask":
        return _fit_dask(params, train, valid, num_boost_round, early_stopping_rounds, settings)
    return _fit_local(params, train, valid, num_boost_round, early_stopping_rounds)


def _require_reiterable(batches: Iterable[Batch], name: str) -> None:
    if iter(batches) is batches:
        raise TypeError(
            f"{name} is a one-shot iterator (e.g. a generator), but the batches are read more than once; "
            "pass a list of batches or BatchSource(function returning a fresh iterator)"
        )


def _checked(batches: Iterable[Batch], name: str) -> Iterator[Batch]:
    """The non-empty batches, each checked for shape and dtype (an error names the batch)."""
    n_cols = weighted = None
    for i, batch in enumerate(batches):
        X, y, weight = batch
        if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype == np.float32):
            raise ValueError(
                f"{name} batch {i}: X must be a 2-D float32 numpy array (got {type(X).__name__} "
                f"{getattr(X, 'dtype', '')} {getattr(X, 'shape', '')}); float64 doubles the memory a batch takes"
            )
        n_cols = X.shape[1] if n_cols is None else n_cols
        if X.shape[1] != n_cols:
            raise ValueError(f"{name} batch {i}: {X.shape[1]} columns where the first batch has {n_cols}")
        if len(y) != len(X) or (weight is not None and len(weight) != len(X)):
            raise ValueError(
                f"{name} batch {i}: {len(X)} rows of X but {len(y)} labels"
                + ("" if weight is None else f" and {len(weight)} weights")
            )
        weighted = (weight is not None) if weighted is None else weighted
        if (weight is not None) != weighted:
            raise ValueError(f"{name} batch {i}: some batches have weights and some do not; give weights in all or none")
        if len(X):
            yield X, y, weight


# -- local --------------------------------------------------------------------------------------


def _fit_local(params, train, valid, num_boost_round, early_stopping_rounds):
    import xgboost as xgb

    class BatchIter(xgb.DataIter):
        """Hands XGBoost one batch per ``next``; ``reset`` starts the batches again."""

        def __init__(self, batches: Iterable[Batch], name: str):
            self._batches, self._name, self._it = batches, name, None
            super().__init__(release_data=True)  # XGBoost drops its reference to a batch once consumed

        def next(self, input_data: Callable) -> bool:
            if self._it is None:
                self._it = _checked(self._batches, self._name)
            batch = next(self._it, None)
            if batch is None:
                return False
            X, y, weight = batch
            input_data(data=X, label=y, weight=weight)
            return True

        def reset(self) -> None:
            self._it = None

    max_bin = params.get("max_bin")  # the matrix must bin as the booster expects
    dtrain = xgb.QuantileDMatrix(BatchIter(train, "train"), max_bin=max_bin)
    evals = [(dtrain, "train")]
    if valid is not None:  # the valid rows are binned on the train rows' cuts (ref), as "hist" requires
        evals.append((xgb.QuantileDMatrix(BatchIter(valid, "valid"), max_bin=max_bin, ref=dtrain), "valid"))
    curves: dict[str, Any] = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=num_boost_round,
        evals=evals,
        early_stopping_rounds=early_stopping_rounds if valid is not None else None,
        evals_result=curves,
        verbose_eval=False,
    )
    return booster, curves


# -- dask ---------------------------------------------------------------------------------------


def _fit_dask(params, train, valid, num_boost_round, early_stopping_rounds, settings: Settings):
    try:
        import dask.array as da
        import xgboost.dask as dxgb
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError(f"SMARTROUTER_TRAIN_ENGINE=dask cannot import {exc.name}: {DASK_INSTALL_HINT}") from exc

    cluster = None
    if settings.dask_scheduler:
        try:
            # any failure here (refused, timed out, not a Dask scheduler answering) means the same thing
            client = Client(settings.dask_scheduler)
        except Exception as exc:
            raise ConfigError(
                f"SMARTROUTER_DASK_SCHEDULER={settings.dask_scheduler!r} cannot be reached ({type(exc).__name__}: {exc}); "
                "start that cluster, fix the address, or unset it to train on a LocalCluster on this machine"
            ) from exc
    else:
        import logging

        import psutil

        n = settings.dask_workers
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=int(psutil.virtual_memory().total * LOCAL_CLUSTER_MEMORY_SHARE / n),
            dashboard_address=None,  # no fixed port: other jobs on this machine may hold :8787
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        workers = list(client.scheduler_info()["workers"])
        if not workers:
            raise ConfigError(
                f"the Dask cluster at {client.scheduler.address} has no workers; start workers for it "
                "(dask worker <address>) or unset SMARTROUTER_DASK_SCHEDULER"
            )
        X, y, weight = _dask_arrays(client, da, workers, train, "train")
        dtrain = dxgb.DaskQuantileDMatrix(client, X, y, weight=weight, max_bin=params.get("max_bin"))
        evals = [(dtrain, "train")]
        if valid is not None:
            X, y, weight = _dask_arrays(client, da, workers, valid, "valid")
            evals.append((dxgb.DaskQuantileDMatrix(client, X, y, weight=weight, max_bin=params.get("max_bin"), ref=dtrain), "valid"))
        out = dxgb.train(
            client,
            params,
            dtrain,
            num_boost_round=num_boost_round,
            evals=evals,
            early_stopping_rounds=early_stopping_rounds if valid is not None else None,
            verbose_eval=False,
        )
        curves = {name: {metric: list(values) for metric, values in by.items()} for name, by in out["history"].items()}
        return out["booster"], curves
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dask_arrays(client, da, workers: list[str], batches: Iterable[Batch], name: str):
    """(X, y, weight) dask arrays whose chunks are the batches, each batch placed on one worker."""
    xs, ys, ws = [], [], []
    for batch, worker in zip(_checked(batches, name), itertools.cycle(workers)):
        parts = [a for a in batch if a is not None]
        futures = client.scatter(parts, workers=[worker])  # the driver holds one batch at a time
        chunks = [da.from_delayed(f, shape=a.shape, dtype=a.dtype) for f, a in zip(futures, parts)]
        xs.append(chunks[0])
        ys.append(chunks[1])
        if len(chunks) == 3:
            ws.append(chunks[2])
    if not xs:
        raise ValueError(f"{name} has no rows: every batch is empty")
    return da.concatenate(xs), da.concatenate(ys), (da.concatenate(ws) if ws else None)
