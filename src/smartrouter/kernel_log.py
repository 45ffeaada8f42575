"""What a stage's kernel may print into the daily run's log (the cron log).

A stage kernel writes straight to the runner's stderr (file descriptor 2, inherited), so every kernel
start and every TensorFlow import put a screenful of noise into ``runs/cron.log``: ipykernel's "running
over TCP without encryption", debugpy's frozen-modules warning, and TensorFlow's C++ start-up lines
(absl's "All log messages before absl::InitializeLog()", oneDNN and CPU-feature notes, CUDA plugin
registration, a graph attribute mismatch logged at ERROR level on every ``tf.data`` map). Real
failures never depend on those lines: a stage fails through papermill's exception, and the runner
prints the failing cell and its error.

Two measures, while a stage runs (``quiet_kernel``):

* at the source, environment defaults the kernel inherits (a value already set wins, so anyone can
  turn the noise back on): ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's C++ INFO and WARNING after start-up),
  ``PYDEVD_DISABLE_FILE_VALIDATION=1`` (the debugger's frozen-modules warning);
* the rest cannot be switched off by configuration (absl prints everything logged before it is
  initialised, whatever the level), so file descriptor 2 goes through a filter that drops exactly the
  known noise lines in ``NOISE`` and passes every other line through unchanged, in order. An ERROR line
  from TensorFlow is dropped only when it is the known-benign message; any other one shows.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

KERNEL_ENV_DEFAULTS: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}

_ABSL = r"^[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "  # absl's prefix: severity, date, time, thread, file:line]
NOISE: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _ABSL.replace("[IWE]", "[IW]"),  # absl INFO and WARNING lines (oneDNN, CPU features, CUDA plugins)
    # ERROR lines only when they are the known-benign ones: a graph attribute this TensorFlow build does not
    # know (every tf.data map), and CUDA plugin registration on a machine without a GPU
    r"^E\d{4} [\d:.]+\s+\d+ (node_def_util\.cc:\d+\] NodeDef mentions attribute \S+ which is not in the op definition"
    r"|\S+:\d+\] (Unable to register cu(DNN|FFT|BLAS) factory|failed call to cuInit"
    r"|computation placer already registered))",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"^\d+\.\d+s - Debugger warning: It seems that frozen modules are being used",
    r"^\d+\.\d+s - Note: Debugging will proceed\. Set PYDEVD_DISABLE_FILE_VALIDATION",
    r"^\d+\.\d+s - to python to disable frozen modules\.",
    r"^\d+\.\d+s - Make sure you're using an optimized python build",
    r"^\d+\.\d+s - Note: Debugging will proceed",
))


def is_noise(line: str) -> bool:
    """True for a known noise line of a stage kernel (never for anything else)."""
    return any(p.search(line) for p in NOISE)


@contextmanager
def quiet_kernel() -> Iterator[dict[str, int]]:
    """Environment defaults + the fd-2 filter for the duration of one stage; yields {"dropped": n}."""
    stats = {"dropped": 0}
    added = {k: v for k, v in KERNEL_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to filter
        try:
            yield stats
        finally:
            for k in added:
                os.environ.pop(k, None)
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    out = os.dup(original)  # the pump's own copy: it outlives this block if the kernel lingers

    def pump() -> None:
        with os.fdopen(read_end, "rb") as src, os.fdopen(out, "wb", buffering=0) as dst:
            for raw in src:  # the kernel holds the write end until it exits: EOF comes then
                if is_noise(raw.decode("utf-8", errors="replace")):
                    stats["dropped"] += 1
                    continue
                try:
                    dst.write(raw)
                except OSError:
                    pass

    thread = threading.Thread(target=pump, name="kernel-stderr-filter", daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # drops this process's write end; the pipe ends when the kernel's does
        os.close(original)
        thread.join(timeout=5.0)
        for k in added:
            os.environ.pop(k, None)
