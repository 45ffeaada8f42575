"""Scenario files of the live loop: every shipped file loads, every bad input is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartrouter import catalog
from smartrouter.errors import SmartrouterError
from smartrouter.world.scenario import (
    BUSIEST,
    SCENARIO_DIR,
    Outage,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
)

SHIPPED = ("default", "outage_storm", "issuer_step", "processor_change", "black_friday")

OUTAGE = """
[[outage]]
processor = "WORLDPAY"
day = 3
start = "19:00"
duration_minutes = 180
kind = "timeouts"
severity = 0.9
"""


def _write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def _error(tmp_path: Path, body: str) -> str:
    p = _write(tmp_path, body)
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    msg = str(info.value)
    assert "\n" not in msg, msg  # the CLI prints it as one line
    assert msg.startswith(str(p) + ":"), msg  # names the file
    return msg


# ---------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_loads(name):
    s = load_scenario(SCENARIO_DIR / f"{name}.toml")
    assert s.name == name and s.description
    assert s.outages or s.issuer_steps or s.processor_changes or s.traffic


def test_no_unlisted_scenario_files():
    assert sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")) == sorted(SHIPPED)
    assert (SCENARIO_DIR / "README.md").is_file()


def test_default_is_one_multi_hour_outage_of_the_busiest_processor():
    s = default_scenario()
    assert s.issuer_steps == () and s.processor_changes == () and s.traffic == ()
    (o,) = s.outages
    assert o == Outage(processor="WORLDPAY", day=3, start_minute=19 * 60, duration_minutes=180, kind="timeouts", severity=0.9)
    assert o.processor == catalog.PROCESSORS[0]  # WORLDPAY: the busiest processor of the default world's rules


def test_black_friday_doubles_two_days():
    s = load_scenario(SCENARIO_DIR / "black_friday.toml")
    assert [s.traffic_multiplier(d) for d in range(1, 9)] == [1, 1, 1, 1, 2, 2, 1, 1]


def test_processor_change_disabled_at_takes_effect_at_its_start():
    s = load_scenario(SCENARIO_DIR / "processor_change.toml")
    assert s.disabled_at(3, 6 * 60 - 1) == frozenset()
    assert s.disabled_at(3, 6 * 60) == frozenset({"ELAVON"})
    assert s.disabled_at(7, 23 * 60) == frozenset({"ELAVON"})
    assert s.disabled_at(8, 6 * 60) == frozenset()


# ---------------------------------------------------------------------------- values and forms
def test_start_forms_are_equivalent(tmp_path):
    for start in ('"19:00"', "1140", "19:00:00"):
        s = load_scenario(_write(tmp_path, 'name = "x"\n' + OUTAGE.replace('"19:00"', start)))
        assert s.outages[0].start_minute == 1140, start


def test_kind_defaults_to_timeouts_and_busiest_is_kept_literal(tmp_path):
    body = OUTAGE.replace('kind = "timeouts"\n', "").replace('"WORLDPAY"', f'"{BUSIEST}"')
    s = load_scenario(_write(tmp_path, 'name = "x"\n' + body))
    assert s.outages[0].kind == "timeouts" and s.outages[0].processor == BUSIEST
    resolved = s.resolve_busiest("ELAVON")
    assert resolved.outages[0].processor == "ELAVON"


def test_resolve_busiest_rechecks_overlaps(tmp_path):
    body = 'name = "x"\n' + OUTAGE + OUTAGE.replace('"WORLDPAY"', f'"{BUSIEST}"').replace('"19:00"', '"20:00"')
    s = load_scenario(_write(tmp_path, body))  # "busiest" and WORLDPAY may differ: not an overlap yet
    with pytest.raises(ScenarioError, match=r"outage\[2\].*overlaps outage\[1\]"):
        s.resolve_busiest("WORLDPAY")
    assert s.resolve_busiest("MIT").outages[1].processor == "MIT"


def test_empty_scenario_is_allowed(tmp_path):
    s = load_scenario(_write(tmp_path, 'name = "calm"\n'))
    assert s == Scenario(name="calm", description="")
    assert s.traffic_multiplier(1) == 1.0 and s.disabled_at(1, 0) == frozenset()


def test_scenario_error_is_a_smartrouter_error_with_exit_2():
    assert issubclass(ScenarioError, SmartrouterError) and ScenarioError.exit_code == 2


# ---------------------------------------------------------------------------- every rule
BAD = [
    # (body, fragments the one-line message must contain)
    ('name = "x"\nfoo = 1\n', ["unknown key or table 'foo'", "[[outage]]"]),
    ('name = "x"\n[outages]\nday = 1\n', ["unknown key or table 'outages'"]),
    ('name = "x"\n[outage]\nday = 1\n', ["outage must be an array of tables", "[[outage]]"]),
    ('description = "no name"\n', ["name is missing", 'name = "s"']),
    ("name = 3\n", ["name = 3 must be a non-empty string"]),
    ('name = "x"\ndescription = 1\n', ["description = 1 must be a string"]),
    ('name = "x"\n' + OUTAGE.replace("severity = 0.9", "severity = 0.9\ncolour = 1"), ["outage[1] has unknown key 'colour'"]),
    ('name = "x"\n' + OUTAGE.replace('"WORLDPAY"', '"PAYPAL"'), ["outage[1].processor", '"PAYPAL" is not a known processor', '"WORLDPAY"', '"busiest"']),
    ('name = "x"\n' + OUTAGE.replace('"WORLDPAY"', "7"), ["outage[1].processor = 7 is not a known processor"]),
    ('name = "x"\n' + OUTAGE.replace("day = 3", "day = 0"), ["outage[1].day = 0 is out of range", "from 1"]),
    ('name = "x"\n' + OUTAGE.replace("day = 3", "day = -2"), ["outage[1].day = -2 is out of range"]),
    ('name = "x"\n' + OUTAGE.replace("day = 3", "day = 2.5"), ["outage[1].day = 2.5 must be a whole number"]),
    ('name = "x"\n' + OUTAGE.replace("day = 3", 'day = "3"'), ['outage[1].day = "3" must be a whole number']),
    ('name = "x"\n' + OUTAGE.replace("day = 3", "day = true"), ["outage[1].day = true must be a whole number"]),
    ('name = "x"\n' + OUTAGE.replace("day = 3\n", ""), ["outage[1].day is missing", "day = 3"]),
    ('name = "x"\n' + OUTAGE.replace('"19:00"', '"25:00"'), ['outage[1].start = "25:00" is not a time of day', '"HH:MM"']),
    ('name = "x"\n' + OUTAGE.replace('"19:00"', '"7pm"'), ['outage[1].start = "7pm" is not a time of day']),
    ('name = "x"\n' + OUTAGE.replace('"19:00"', "1440"), ["outage[1].start = 1440 minutes is outside the day", "raise day"]),
    ('name = "x"\n' + OUTAGE.replace('"19:00"', "-5"), ["outage[1].start = -5 minutes is outside the day"]),
    ('name = "x"\n' + OUTAGE.replace('"19:00"', "19.5"), ["outage[1].start = 19.5 is not a time"]),
    ('name = "x"\n' + OUTAGE.replace("180", "0"), ["outage[1].duration_minutes = 0 must be positive"]),
    ('name = "x"\n' + OUTAGE.replace("180", "-30"), ["outage[1].duration_minutes = -30 must be positive"]),
    ('name = "x"\n' + OUTAGE.replace("180", "1.5"), ["outage[1].duration_minutes = 1.5 must be a whole number"]),
    ('name = "x"\n' + OUTAGE.replace("180", "100000"), ["outage[1].duration_minutes = 100000 is out of range"]),
    ('name = "x"\n' + OUTAGE.replace('"timeouts"', '"errors"'), ['outage[1].kind = "errors" is not allowed', '"timeouts", "declines"']),
    ('name = "x"\n' + OUTAGE.replace("0.9", "0"), ["outage[1].severity = 0 is outside (0, 1]"]),
    ('name = "x"\n' + OUTAGE.replace("0.9", "1.2"), ["outage[1].severity = 1.2 is outside (0, 1]"]),
    ('name = "x"\n' + OUTAGE.replace("0.9", "-0.1"), ["outage[1].severity = -0.1 is outside (0, 1]"]),
    ('name = "x"\n' + OUTAGE.replace("0.9", '"high"'), ['outage[1].severity = "high" must be a finite number']),
    ('name = "x"\n' + OUTAGE.replace("0.9", "nan"), ["outage[1].severity = nan must be a finite number"]),
    ('name = "x"\n' + OUTAGE + OUTAGE.replace('"19:00"', '"21:59"'),
     ["outage[2] (WORLDPAY, day 3 21:59-day 4 00:59) overlaps outage[1] (day 3 19:00-day 3 22:00)", "merge"]),
    ('name = "x"\n' + OUTAGE + OUTAGE.replace("day = 3", "day = 2").replace('"19:00"', "1439").replace("180", "1500"),
     ["outage[2]", "overlaps outage[1]"]),  # across midnight
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -0.8\n', ["issuer_step[1] names no issuer", "bank ="]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -0.8\nbank = "ACME"\n',
     ['issuer_step[1].bank = "ACME" is not an issuing bank', '"BBVA MEXICO"']),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = 0\nbank = "BANORTE"\n', ["issuer_step[1].logit_shift = 0 must be non-zero"]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -9\nbank = "BANORTE"\n', ["issuer_step[1].logit_shift = -9 must be non-zero and at most 5"]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -1\nbins = ["4111"]\n', ["issuer_step[1].bins", "six-digit"]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -1\nbins = [411111]\n', ["issuer_step[1].bins", "in quotes"]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -1\nbins = ["411111", "411111"]\n', ["issuer_step[1].bins lists a BIN twice"]),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -1\nbank = "BANORTE"\nprocessors = ["MIT", "VISA"]\n',
     ['issuer_step[1].processors[2] = "VISA" is not a known processor']),
    ('name = "x"\n[[issuer_step]]\nday = 4\nstart = "06:00"\nlogit_shift = -1\nbank = "BANORTE"\nprocessors = "MIT"\n',
     ['issuer_step[1].processors = "MIT" must be a list']),
    ('name = "x"\n[[processor_change]]\nday = 2\nstart = 0\nprocessor = "ELAVON"\naction = "remove"\n',
     ['processor_change[1].action = "remove" is not allowed', '"disable", "enable"']),
    ('name = "x"\n[[processor_change]]\nday = 2\nstart = 0\nprocessor = "ELAVON"\n', ["processor_change[1].action is missing"]),
    ('name = "x"\n[[processor_change]]\nday = 2\nstart = 0\nprocessor = "AMEX"\naction = "disable"\n',
     ["processor_change[1].processor", "only processor for Amex cards", "[[outage]]"]),
    ('name = "x"\n[[processor_change]]\nday = 2\nstart = 0\nprocessor = "ELAVON"\naction = "disable"\n'
     '[[processor_change]]\nday = 3\nstart = 0\nprocessor = "ELAVON"\naction = "disable"\n',
     ['processor_change[2].action = "disable" repeats processor_change[1] for ELAVON']),
    ('name = "x"\n[[processor_change]]\nday = 2\nstart = 0\nprocessor = "ELAVON"\naction = "disable"\n'
     '[[processor_change]]\nday = 2\nstart = "00:00"\nprocessor = "ELAVON"\naction = "enable"\n',
     ["change ELAVON at the same time (day 2 00:00)"]),
    ('name = "x"\n' + "".join(
        f'[[processor_change]]\nday = 2\nstart = 0\nprocessor = "{p}"\naction = "disable"\n' for p in ("WORLDPAY", "ELAVON", "ADYEN")),
     ["processor_change[3] leaves no processor for USD card payments"]),
    ('name = "x"\n[[traffic]]\nday = 5\nmultiplier = 0\n', ["traffic[1].multiplier = 0 is outside (0, 10]"]),
    ('name = "x"\n[[traffic]]\nday = 5\ndays = 0\nmultiplier = 2\n', ["traffic[1].days = 0 is out of range"]),
    ('name = "x"\n[[traffic]]\nday = 0\nmultiplier = 2\n', ["traffic[1].day = 0 is out of range"]),
    ('name = "x"\n[[traffic]]\nday = 5\ndays = 2\nmultiplier = 2\n[[traffic]]\nday = 6\nmultiplier = 3\n',
     ["traffic[2] (days 6-6) overlaps traffic[1] (days 5-6)"]),
    ('name = "x"\n[[outage]\n', ["not valid TOML", "line 2"]),
]


@pytest.mark.parametrize(("body", "fragments"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_scenario_is_one_clear_line(tmp_path, body, fragments):
    msg = _error(tmp_path, body)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_missing_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(ScenarioError, match=r"scenario file not found.*default\.toml"):
        load_scenario(tmp_path / "nope.toml")


def test_non_utf8_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ScenarioError, match="not a UTF-8 text file"):
        load_scenario(p)


def test_second_table_is_named_by_its_index(tmp_path):
    body = 'name = "x"\n' + OUTAGE + OUTAGE.replace("day = 3", "day = 5").replace("180", "-1")
    assert "outage[2].duration_minutes = -1 must be positive" in _error(tmp_path, body)
