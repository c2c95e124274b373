"""``python benchmarks/NAME.py`` runs as ``python -m benchmarks.NAME``.

Run as a script, a benchmark has only ``benchmarks/`` on its import path, not the checkout that holds the
``benchmarks`` package (and ``tests``, whose fake Messages server one benchmark serves). Before its first
import from either, the script replaces its process with the module form of the same command, the checkout
named on ``PYTHONPATH``: one way of running a benchmark, whichever was typed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def run_as_module(script: str) -> NoReturn:
    path = Path(script).resolve()
    checkout = str(path.parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH")) if p)
    # -P: the working directory does not come first on the path, so its own ``benchmarks`` cannot shadow ours.
    os.execv(sys.executable, [sys.executable, "-P", "-m", f"{path.parent.name}.{path.stem}", *sys.argv[1:]])
