"""Message configurations (smartrouter.messages) and how the world generates and answers them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, messages
from smartrouter.errors import ConfigError
from smartrouter.world import World, WorldParams

FACTS = messages.ELIGIBILITY_COLUMNS


def random_payments(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "STORED_CREDENTIAL": rng.integers(0, 2, n), "BILLING_ADDRESS": rng.integers(0, 2, n),
        "TRAVEL_PACKAGE": rng.integers(0, 2, n), "CARD_COUNTRY": rng.choice(["MX", "US", "CO"], n),
        "CHANNEL": rng.choice(list(catalog.CHANNELS), n), "NUM_ATTEMPTS_ORDER": rng.integers(1, 4, n),
    })


@pytest.fixture(scope="module")
def world():
    return World(WorldParams.small(seed=3, experiment_share=0.3))


@pytest.fixture(scope="module")
def attempts(world):
    return pd.concat([world.day(d).attempts for d in range(4)], ignore_index=True)


# ------------------------------------------------------------------ the definition
def test_configs_keys_and_parsing():
    assert len(set(messages.CONFIGS)) == messages.N_CONFIGS == 8
    assert [messages.parse_config_key(k) for k in messages.CONFIG_KEYS] == list(messages.CONFIGS)
    assert messages.config_key(messages.MessageConfig("MIT", 1, "4722")) == "MIT/AVS/4722"
    assert messages.parse_config_key(" mit/noavs/4511 ") == messages.MessageConfig("MIT", 0, "4511")
    with pytest.raises(ConfigError, match="unknown message configuration 'MIT/AVS/9999'.*CIT/NOAVS/4511"):
        messages.parse_config_key("MIT/AVS/9999")
    with pytest.raises(ConfigError, match="not a message configuration"):
        messages.as_config(("MIT",))
    # config_codes is the inverse of config_columns
    codes = np.arange(messages.N_CONFIGS)
    assert (messages.config_codes(pd.DataFrame(messages.config_columns(codes))) == codes).all()


def test_eligibility_rules_one_payment_at_a_time():
    for stored in (0, 1):
        for billing in (0, 1):
            for package in (0, 1):
                got = messages.eligible_configs({"stored_credential": stored, "BILLING_ADDRESS": billing, "TRAVEL_PACKAGE": package})
                assert len(got) == 2 ** (stored + billing + package)
                assert all(c.initiator == "CIT" or stored for c in got)
                assert all(c.avs == 0 or billing for c in got)
                assert all(c.mcc == messages.AIRLINE_MCC or package for c in got)
                assert messages.MessageConfig("CIT", 0, "4511") in got  # the plain message is always allowed


def test_unknown_facts_allow_nothing_extra_and_bad_values_are_named():
    assert messages.eligible_configs({}) == [messages.MessageConfig("CIT", 0, "4511")]
    m = messages.eligible_matrix(pd.DataFrame({"STORED_CREDENTIAL": [None, True, "true", 1.0]}))
    assert m[:, messages.CONFIG_INDEX[messages.MessageConfig("MIT", 0, "4511")]].tolist() == [False, True, True, True]
    with pytest.raises(ConfigError, match="STORED_CREDENTIAL must be 0 or 1"):
        messages.eligible_matrix(pd.DataFrame({"STORED_CREDENTIAL": ["maybe"]}))
    with pytest.raises(ConfigError, match="BILLING_ADDRESS must be 0 or 1"):
        messages.eligible_matrix(pd.DataFrame({"BILLING_ADDRESS": [2]}))
    with pytest.raises(ConfigError, match="MCC values .*5999"):
        messages.config_codes(pd.DataFrame({"MCC": ["5999"]}))
    with pytest.raises(ConfigError, match="a payment must be a mapping"):
        messages.eligible_configs(["STORED_CREDENTIAL"])  # type: ignore[arg-type]


def test_matrix_and_single_payment_agree_and_the_default_is_always_eligible():
    frame = random_payments(400, seed=1)
    matrix = messages.eligible_matrix(frame)
    default = messages.default_config(frame)
    for i, row in enumerate(frame.to_dict("records")):
        assert [c for c, ok in zip(messages.CONFIGS, matrix[i]) if ok] == messages.eligible_configs(row)
        assert messages.CONFIG_INDEX[messages.default_config(row)] == default[i]
    assert matrix[np.arange(len(frame)), default].all()
    # the merchant's rule: MIT only for stored cards on app payments and retries, AVS for foreign cards, MCC 4511
    d = [messages.CONFIGS[k] for k in default]
    stored, app, retry = frame["STORED_CREDENTIAL"] == 1, frame["CHANNEL"] == "APP", frame["NUM_ATTEMPTS_ORDER"] > 1
    assert [c.initiator == "MIT" for c in d] == (stored & (app | retry)).tolist()
    assert [c.avs == 1 for c in d] == ((frame["BILLING_ADDRESS"] == 1) & (frame["CARD_COUNTRY"] != "MX")).tolist()
    assert {c.mcc for c in d} == {messages.AIRLINE_MCC}


def test_with_config_and_choose_config():
    frame = random_payments(5).assign(AVS_CHECKED=[True, False, True, False, True], AVS_DATA=1)
    out = messages.with_config(frame, "MIT/NOAVS/4722")
    assert (messages.config_codes(out) == messages.CONFIG_KEYS.index("MIT/NOAVS/4722")).all()
    assert out["AVS_CHECKED"].dtype == bool and not out["AVS_CHECKED"].any()
    assert frame["AVS_DATA"].eq(1).all()  # a copy: the input is untouched
    payment = {"STORED_CREDENTIAL": 0, "BILLING_ADDRESS": 1, "CARD_COUNTRY": "US"}
    assert messages.choose_config(payment, "CIT/AVS/4511") == messages.MessageConfig("CIT", 1, "4511")
    for bad in ("MIT/AVS/4511", "nonsense", None, ""):  # ineligible, unknown, absent: the default
        assert messages.choose_config(payment, bad) == messages.default_config(payment) == messages.MessageConfig("CIT", 1, "4511")


# ------------------------------------------------------------------ the world
def test_every_generated_message_is_eligible_and_logged_with_its_propensity(attempts):
    codes = messages.config_codes(attempts)
    elig = messages.eligible_matrix(attempts)
    assert elig[np.arange(len(attempts)), codes].all()
    k = elig.sum(axis=1)
    rand = attempts["MESSAGE_RANDOMIZED"].to_numpy() == 1
    arm = attempts["DYNAMIC_ROUTING_DETAIL"].str.contains('"arm":"EXPERIMENT"').to_numpy()
    assert (rand == arm).all() and 0.2 < rand.mean() < 0.4
    assert np.allclose(attempts["MESSAGE_PROPENSITY"].to_numpy(), np.where(rand, 1.0 / k, 1.0))
    # outside the experiment the merchant's deterministic default
    assert (codes[~rand] == messages.default_config(attempts)[~rand]).all()
    assert (attempts["AVS_CHECKED"].to_numpy() == (attempts["AVS_DATA"].to_numpy() == 1)).all()
    assert set(attempts["MCC"]) == set(messages.MCC_VALUES) and set(attempts["MCI_MSI_TYPE"]) == set(catalog.MESSAGE_TYPES)


def test_randomized_messages_are_uniform_over_the_eligible_ones(attempts):
    from scipy.stats import chi2

    rows = attempts[(attempts["MESSAGE_RANDOMIZED"] == 1)]
    elig = messages.eligible_matrix(rows)
    codes = messages.config_codes(rows)
    stat, df, n = 0.0, 0, 0
    for pattern in np.unique(elig, axis=0):  # within each set of allowed configurations, each is drawn alike
        sel = (elig == pattern).all(axis=1)
        counts = np.bincount(codes[sel], minlength=messages.N_CONFIGS)[pattern]
        assert counts.sum() == sel.sum()  # nothing outside the allowed set
        if len(counts) > 1:
            expected = counts.sum() / len(counts)
            stat += float(((counts - expected) ** 2 / expected).sum())
            df += len(counts) - 1
        n += int(sel.sum())
    # all 8 patterns of the 3 facts occur: 1, 2 (x3), 4 (x3) and 8 allowed configurations, 0 + 3 + 9 + 7 = 19 df
    assert n > 1000 and df == 19
    assert stat < chi2.ppf(0.999, df)


def test_eligibility_facts_are_realistic(attempts):
    first = attempts[attempts["NUM_ATTEMPTS_ORDER"] == 1]
    returning = first["IS_RETURNING_CUSTOMER"].to_numpy()
    stored = first["STORED_CREDENTIAL"].to_numpy()
    assert stored[returning].mean() > 0.45 and stored[~returning].mean() < 0.15  # cards on file come back
    # a user's card on file is the same on every order
    assert first.groupby("USER_ID")["STORED_CREDENTIAL"].nunique().max() == 1
    intl = first["FLIGHT_TYPE"] == "INTERNATIONAL"
    assert first.loc[intl, "TRAVEL_PACKAGE"].mean() > first.loc[~intl, "TRAVEL_PACKAGE"].mean()


def test_hidden_message_effects_have_realistic_sizes():
    # over many seeds: most (card type, processor) cells near zero, some of a few tenths of a logit
    cells = np.concatenate([np.abs(World(WorldParams.small(seed=s)).effects.avs_msg[:-1]).ravel() for s in range(8)])
    assert 0.45 < (cells < 0.1).mean() < 0.85 and (cells > 0.2).mean() > 0.1 and cells.max() < 1.5


def test_oracle_answers_any_processor_and_configuration(world, attempts):
    oracle = world.oracle()
    rows = attempts.head(300)
    joint = oracle.joint_probability_matrix(rows, include_outages=False)
    loose = oracle.joint_probability_matrix(rows, include_outages=False, eligible_only=False)
    assert joint.shape == (300, len(catalog.PROCESSORS), messages.N_CONFIGS)
    elig = messages.eligible_matrix(rows)
    assert (joint[~np.broadcast_to(elig[:, None, :], joint.shape)] == 0).all()
    assert np.array_equal(joint, loose * elig[:, None, :])
    for k, key in enumerate(messages.CONFIG_KEYS):
        p = oracle.probability_matrix(rows, config=key, include_outages=False)
        assert np.allclose(p, loose[:, :, k], rtol=0, atol=1e-15)
    # the row's own message is the default; message_type replaces only the initiator
    own = messages.config_codes(rows)
    assert np.allclose(oracle.probability_matrix(rows, include_outages=False), loose[np.arange(300), :, own])
    mit = oracle.approval_probability(rows, "WORLDPAY", "MIT", include_outages=False)
    to_mit = own % 4 + 4
    assert np.allclose(mit, loose[np.arange(300), 0, to_mit])
    # the oracle-best joint choice is always eligible
    best = joint.reshape(300, -1).argmax(axis=1) % messages.N_CONFIGS
    assert elig[np.arange(300), best].all()
    with pytest.raises(ConfigError, match="2 message configurations for 300"):
        oracle.approval_probability(rows, "WORLDPAY", config=["MIT/AVS/4511"] * 2)
    with pytest.raises(ConfigError, match="codes must be in 0..7"):
        oracle.approval_probability(rows, "WORLDPAY", config=np.full(300, 9))


def test_messages_move_approval_as_the_truth_says(world, attempts):
    # the generator samples from the oracle's message term: randomized MIT vs CIT rows on WORLDPAY debit
    # cards (designed: MIT -0.40 logit there) approve less
    oracle = world.oracle()
    rows = attempts[(attempts["MESSAGE_RANDOMIZED"] == 1) & (attempts["STATUS"] != "PROCESSING")]
    p = oracle.approval_probability(rows, rows["PROCESSOR"].to_numpy(), resolved_only=True)
    y = (rows["STATUS"] == "APPROVED").to_numpy()
    sd = np.sqrt((p * (1 - p)).sum())
    assert abs(y.sum() - p.sum()) < 4 * sd  # outcomes drawn from the truth of the message sent


def test_one_payment_reads_facts_like_a_frame():
    # the request path (no pandas) and the frame path agree on every spelling of a fact
    values = [0, 1, True, False, 1.0, 0.0, None, float("nan"), "true", "FALSE", "1", " 0 ", np.int64(1), np.bool_(False)]
    rng = np.random.default_rng(4)
    rows = [{c: values[rng.integers(len(values))] for c in FACTS} | {"CARD_COUNTRY": rng.choice(["MX", "US", None]),
            "CHANNEL": rng.choice(["APP", "WEB", None]), "NUM_ATTEMPTS_ORDER": int(rng.integers(1, 4))} for _ in range(300)]
    frame = pd.DataFrame(rows, dtype=object)
    matrix, default = messages.eligible_matrix(frame), messages.default_config(frame)
    for i, row in enumerate(rows):
        assert messages.eligible_mask(row).tolist() == matrix[i].tolist()
        assert messages.CONFIG_INDEX[messages.default_config({k.lower(): v for k, v in row.items()})] == default[i]
    with pytest.raises(ConfigError, match="TRAVEL_PACKAGE must be 0 or 1"):
        messages.eligible_mask({"travel_package": "sometimes"})
    with pytest.raises(ConfigError, match="STORED_CREDENTIAL must be 0 or 1"):
        messages.is_eligible({"STORED_CREDENTIAL": 3}, "MIT/NOAVS/4511")
