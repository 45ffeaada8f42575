"""The world option ``truth = "interactions"`` (README "A world with interactions"): hidden three-way
terms (attribute x attribute x processor) on top of the default truth, drawn from the seed after
every other draw, that no single attribute x processor effect captures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from smartrouter import catalog, messages, warehouse
from smartrouter.cli import main
from smartrouter.errors import ConfigError
from smartrouter.world import World, WorldParams
from smartrouter.world.entities import INTERACTION_SLAB_SD, INTERACTION_SLAB_SHARE, INTERACTION_SPIKE_SD, P
from smartrouter.world.oracle import amount_band, hour_band, interaction_logit, issuer_logit

END = dt.date(2025, 6, 30)
TINY = dict(days=3, per_day=400, end=END, seed=42)
# sha256 of the tiny default world's tables (attempts and routing log of each day, then the rules, as
# CSV), computed at commit de8fd5f, before the truth option existed: the default world must keep
# every byte. A deliberate change to the default world updates this digest in the same commit.
DEFAULT_TINY_DIGEST = "4ec70426cf9ac664a0a19a1af865d1412d1bd1885bf1433cbdeb70a5e5fc12e1"
INTERACTION_FIELDS = ("bank_flight_proc", "amount_cur_proc", "hour_channel_proc")
# Columns of a first attempt fixed before its outcome is drawn: the payment, its route and its message.
PAYMENT_COLUMNS = ("ORDER_ID", "USER_ID", "CREATED_AT", "PROCESSOR", "AMOUNT", "CURRENCY", "CARD_BIN", "BANK",
                   "CARD_TYPE", "FLIGHT_TYPE", "CHANNEL", "MCI_MSI_TYPE", "AVS_DATA", "MCC", "FRAUD_RATE_COHORT")


def _digest(world: World) -> str:
    h = hashlib.sha256()
    for chunk in world.iter_days():
        for frame in (chunk.attempts, chunk.routing_log):
            h.update(frame.to_csv(index=False).encode())
    h.update(world.rules_frame().to_csv(index=False).encode())
    return h.hexdigest()


def test_the_default_world_keeps_every_byte():
    assert WorldParams(**TINY).truth == "default"
    assert _digest(World(WorldParams(**TINY))) == DEFAULT_TINY_DIGEST
    eff = World(WorldParams(**TINY)).effects
    for name in INTERACTION_FIELDS:
        assert not getattr(eff, name).any(), name


def test_a_world_json_without_truth_reads_as_the_default_world():
    data = WorldParams(**TINY).to_dict()
    assert data["truth"] == "default"
    del data["truth"]  # world.json written before the option existed
    assert WorldParams.from_dict(data).truth == "default"
    inter = WorldParams(**TINY, truth="interactions")
    assert WorldParams.from_dict(inter.to_dict()) == inter


def test_the_interactions_world_differs_only_by_the_new_terms():
    base, inter = World(WorldParams(**TINY)), World(WorldParams(**TINY, truth="interactions"))
    for f in dataclasses.fields(base.effects):
        a, b = getattr(base.effects, f.name), getattr(inter.effects, f.name)
        if f.name in INTERACTION_FIELDS:
            assert not np.array_equal(a, b), f.name
        else:
            np.testing.assert_array_equal(a, b, err_msg=f.name)
    for part in ("bins", "users", "outages"):
        for f in dataclasses.fields(getattr(base, part)):
            a, b = getattr(getattr(base, part), f.name), getattr(getattr(inter, part), f.name)
            same = (a == b) if isinstance(a, dict) else np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            assert same, f"{part}.{f.name}"
    # the same payments, routed and messaged the same; only the outcomes are drawn from other odds
    da, db = base.day(0).attempts, inter.day(0).attempts
    fa, fb = (d[d["NUM_ATTEMPTS_ORDER"] == 1].reset_index(drop=True) for d in (da, db))
    pd.testing.assert_frame_equal(fa[list(PAYMENT_COLUMNS)], fb[list(PAYMENT_COLUMNS)])
    assert (fa["STATUS"] != fb["STATUS"]).any()
    # the truth's logit differs by exactly the interaction terms, for every processor and message
    oracle = base.oracle()
    enc = oracle.encode(da)
    rng = np.random.default_rng(0)
    config = rng.integers(0, messages.N_CONFIGS, len(enc))
    for j in range(P):
        proc = np.full(len(enc), j)
        za = issuer_logit(base.effects, enc, proc, config, oracle.span_sec, base.outages)
        zb = issuer_logit(inter.effects, enc, proc, config, oracle.span_sec, inter.outages)
        np.testing.assert_allclose(zb - za, interaction_logit(inter.effects, enc, proc), rtol=0, atol=1e-12)


def test_the_terms_are_sparse_and_sized_as_drawn():
    """Spike-and-slab: a cell is a slab cell (sd INTERACTION_SLAB_SD) with probability
    INTERACTION_SLAB_SHARE; |cell| > 0.15 happens to a spike cell (sd 0.03: 5 sd) essentially never
    and to a slab cell with probability 2 * (1 - Phi(0.15 / 0.45)) = 0.739, so the share of big cells
    over all tables' n cells is 0.25 * 0.739 = 0.185 with binomial sd sqrt(0.185 * 0.815 / n)."""
    from math import erf, sqrt

    eff = World(WorldParams(**TINY, truth="interactions")).effects
    cells = np.concatenate([getattr(eff, name)[:-1, :-1].ravel() for name in INTERACTION_FIELDS])
    for name in INTERACTION_FIELDS:  # unknown levels (the trailing rows) add nothing
        table = getattr(eff, name)
        assert not table[-1].any() and not table[:, -1].any(), name
    assert 5 * INTERACTION_SPIKE_SD <= 0.15
    p_big = INTERACTION_SLAB_SHARE * (1 - erf(0.15 / INTERACTION_SLAB_SD / sqrt(2)))
    sd = sqrt(p_big * (1 - p_big) / len(cells))
    assert abs(np.mean(np.abs(cells) > 0.15) - p_big) < 4 * sd
    assert 0.5 * INTERACTION_SLAB_SD < np.abs(cells).max() < 6 * INTERACTION_SLAB_SD


def _additive_residual_rms(world: World, days: int = 5) -> dict[str, float]:
    """Per big processor, the RMS of what a per-processor additive fit of the truth's logit leaves.

    Rows: the world's first days' payments as first attempts (no retry terms), one message
    configuration, no outages. Design: one-hot of every attribute the default truth reads (the BIN,
    which fixes brand, card type, bank and card country; currency, fraud cohort, fare, channel,
    flight type, returning customer) and of the interaction terms' bands (amount band, local hour
    band), plus the default truth's numeric terms (log amount, departure within a day, extra
    passengers, span fraction and its sine wave, the step bank after its step). The default truth's
    logit lies in this design's span, so its residual is the solver's rounding only."""
    attempts = pd.concat([world.day(d).attempts for d in range(days)], ignore_index=True)
    oracle, eff = world.oracle(), world.effects
    enc = oracle.encode(attempts)
    enc.attempt = np.ones(len(enc), dtype=np.int64)
    n = len(enc)
    frac = enc.t_sec / oracle.span_sec
    blocks = []
    for codes in (enc.bin_idx, enc.currency, enc.fraud, enc.fare, enc.channel, amount_band(enc.log_amount),
                  hour_band(enc.t_sec), enc.international, enc.returning):
        inverse = np.unique(codes, return_inverse=True)[1]
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), inverse))))
    step = (enc.bank_idx == eff.step_bank) & (enc.t_sec >= eff.step_sec)
    numeric = np.column_stack([enc.log_amount, enc.days_to_departure <= 1, np.maximum(enc.passengers - 1, 0),
                               frac, np.sin(2 * np.pi * frac), step]).astype(float)
    X = sp.hstack(blocks + [sp.csr_matrix(numeric)]).tocsr()
    config = np.zeros(n, dtype=np.int64)
    out = {}
    for name in ("WORLDPAY", "MIT", "ELAVON"):
        proc = np.full(n, catalog.PROCESSOR_INDEX[name])
        rows = oracle.eligible(enc, proc)
        z = issuer_logit(eff, enc, proc, config, oracle.span_sec, None)[rows]
        coef = lsqr(X[rows], z, atol=1e-12, btol=1e-12, iter_lim=20_000)[0]
        out[name] = float(np.sqrt(np.mean((z - X[rows] @ coef) ** 2)))
    return out


def test_no_additive_per_processor_fit_captures_the_interactions():
    """The default truth is additive per processor in the fit's columns: it leaves nothing (1e-4 logit
    bounds the solver's rounding with margin). The interaction terms leave a residual of the order of
    their slab cells: each table is a few levels by a few, so after its per-level means are fitted away
    roughly half of a big cell stays; 0.05 logit is a ninth of the slab sd and 50x any rounding."""
    params = dict(days=14, per_day=2_000, end=END, seed=7)
    default = _additive_residual_rms(World(WorldParams(**params)))
    inter = _additive_residual_rms(World(WorldParams(**params, truth="interactions")))
    assert max(default.values()) < 1e-4, default
    assert min(inter.values()) > 0.05, inter


def test_a_bad_truth_is_one_line_naming_the_choices(capsys):
    with pytest.raises(ConfigError, match="truth='additive'.*default, interactions"):
        WorldParams(**TINY, truth="additive").validate()
    assert main(["world", "build", "--profile", "small", "--truth", "additive", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "default, interactions" in err and "additive" in err


def test_world_json_records_the_truth_and_the_fingerprint_tells_the_worlds_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTROUTER_HOME", str(tmp_path))
    monkeypatch.setenv("SMARTROUTER_WAREHOUSE", "local")
    args = ["world", "build", "--profile", "small", "--days", "2", "--per-day", "300", "--seed", "3",
            "--end", "2024-03-31", "--quiet"]
    infos = {}
    for truth in ("default", "interactions"):
        monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path / truth))
        assert main([*args, "--truth", truth]) == 0
        infos[truth] = json.loads((tmp_path / truth / warehouse.WORLD_FILE).read_text())
        assert infos[truth]["params"]["truth"] == truth
        # the live days and the evaluation rebuild the world from world.json: with its truth
        assert warehouse.load_world_params().truth == truth
    assert infos["default"]["fingerprint"] != infos["interactions"]["fingerprint"]
