"""Resumable stages: ``fgrlhf`` commands (or any step that writes one output) run in sequence in-process, each
skipped when its output exists, so an interrupted run re-run continues at the first stage not done. The
demo (``fgrlhf demo``) and the paper-table benchmarks (``benchmarks/common.py``) chain their stages here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    """An ``fgrlhf`` command run by :func:`run_command` exited with a non-zero status."""

    def __init__(self, argv: list[str], code: int):
        super().__init__(f"fgrlhf {' '.join(argv)} exited with status {code}")
        self.code = code


class StoppedAfter(Exception):
    """The stage named as the last one (``until``) is done: the stages after it do not run."""


def run_command(*argv: object, stdout_to_stderr: bool = False) -> None:
    """Run ``fgrlhf ARGV`` in-process, on the caller's Ray instance. ``stdout_to_stderr``: the command's
    JSON line goes to stderr, for a caller whose stdout holds a table. A non-zero exit raises CommandFailed."""
    from fgrlhf.cli import build_parser

    words = [str(a) for a in argv]
    args = build_parser().parse_args(words)
    log.info("fgrlhf %s", " ".join(words))
    with contextlib.redirect_stdout(sys.stderr) if stdout_to_stderr else contextlib.nullcontext():
        code = args._module.main(args)
    if code:
        raise CommandFailed(words, code)


class Stages:
    """Runs each stage unless it is done. Without ``timings``, a stage is done when its output exists (the
    step writes it last, atomically). With ``timings`` (a JSON file of the seconds each finished stage took,
    kept so a resumed run still reports the earlier ones), done also means finished: a stage that wrote its
    output and then failed, e.g. ``fgrlhf edit`` with some items failed (exit 3), runs again and retries
    only what failed. ``until`` names the last stage to run (:class:`StoppedAfter` after it)."""

    def __init__(self, timings: Path | None = None, until: str | None = None, say: Callable[[str], None] = log.info):
        self.timings = timings
        self.until = until
        self.say = say
        self.seconds: dict[str, float] = (
            json.loads(timings.read_text(encoding="utf-8")) if timings is not None and timings.exists() else {}
        )

    def run(self, output: Path, step: Callable[[], None], name: str | None = None) -> Path:
        """Run ``step`` (named ``name``, default the output's file name) unless done; ``output``."""
        name = name or output.name
        if output.exists() and (self.timings is None or name in self.seconds):
            self.say(f"stage {name}: done earlier ({output}), skipped")
        else:
            began = time.perf_counter()
            step()
            if not output.exists():
                raise RuntimeError(f"stage {name} finished without writing {output}")
            self.seconds[name] = round(time.perf_counter() - began, 1)
            if self.timings is not None:
                self.timings.write_text(json.dumps(self.seconds, indent=2) + "\n", encoding="utf-8")
        if name == self.until:
            raise StoppedAfter(name)
        return output
