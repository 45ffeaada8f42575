"""Settings: defaults run the local world; every override is validated with a clear message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smartrouter import config
from smartrouter.errors import ConfigError


def test_defaults_hang_off_the_repo_root():
    settings = config.load_settings({})
    assert settings.home == config.REPO_ROOT
    assert settings.warehouse == "local"
    assert settings.local_dir == config.REPO_ROOT / "data" / "warehouse"
    assert settings.runs_dir == config.REPO_ROOT / "runs"
    assert settings.registry_dir == config.REPO_ROOT / "models"
    assert settings.port == 8000
    assert settings.admin_token is None


def test_relative_overrides_resolve_against_home(tmp_path: Path):
    settings = config.load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_RUNS_DIR": "elsewhere/runs"})
    assert settings.runs_dir == tmp_path / "elsewhere" / "runs"
    absolute = config.load_settings({"SMARTROUTER_REGISTRY_DIR": str(tmp_path / "reg")})
    assert absolute.registry_dir == tmp_path / "reg"


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"SMARTROUTER_WAREHOUSE": "oracle"}, "SMARTROUTER_WAREHOUSE"),
        ({"SMARTROUTER_PORT": "http"}, "SMARTROUTER_PORT"),
        ({"SMARTROUTER_PORT": "70000"}, "1..65535"),
    ],
)
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config.load_settings(env)


def test_secrets_never_leave_settings():
    settings = config.load_settings({"SMARTROUTER_ADMIN_TOKEN": "s3cret"})
    assert "s3cret" not in json.dumps(settings.public_dict())
    assert "s3cret" not in repr(settings)


def test_config_command_prints_settings_without_the_token(monkeypatch):
    env = {"SMARTROUTER_ADMIN_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "smartrouter", "config", "--json"], capture_output=True, text=True, env=env, check=True
    )
    values = json.loads(out.stdout)
    assert values["admin_token"] == "set"
    assert "s3cret" not in out.stdout


def test_bad_setting_is_one_line_and_non_zero():
    env = {"SMARTROUTER_WAREHOUSE": "oracle", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "smartrouter", "config"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "SMARTROUTER_WAREHOUSE" in out.stderr
