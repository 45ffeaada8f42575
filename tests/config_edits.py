"""One check for strict TOML config loaders: an edited copy of the shipped file must fail naming the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from smartrouter.errors import ConfigError


def assert_edit_refused(loader: Callable[[Path], Any], shipped: Path, tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    """Replace ``edit[0]`` (which must be in the shipped file) by ``edit[1]``; the loader must name ``key`` and the file."""
    text = shipped.read_text()
    assert edit[0] in text, f"{edit[0]!r} is no longer in {shipped.name}: update the test"
    bad = tmp_path / shipped.name
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as info:
        loader(bad)
    assert key in str(info.value) and str(bad) in str(info.value)
