"""Resumable stages: ``fgrlhf`` commands (or any step that writes one output) run in sequence in-process, each
skipped when it is done, so an interrupted run re-run continues at the first stage not done.

:class:`Pipeline` is the one staged-job runner: the demo (``fgrlhf demo``), the paper job (``fgrlhf paper``)
and the paper-table benchmarks' data preparation (``benchmarks/common.py``) chain their stages on it. It keeps
each finished stage's seconds (``stage_seconds.json``) and :func:`content_key` of its settings and input files
(``stage_keys.json``) in the run's directory, so a re-run into that directory with other settings or inputs
is refused (:class:`StageChanged`) instead of reusing stale outputs; it logs one line per stage with an ETA and
sets a Ray dashboard gauge per stage (:class:`StageProgress`). :class:`Stages` is the skip-if-done core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fgrlhf.config import ConfigError

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    """An ``fgrlhf`` command run by :func:`run_command` exited with a non-zero status."""

    def __init__(self, argv: list[str], code: int):
        super().__init__(f"fgrlhf {' '.join(argv)} exited with status {code}")
        self.code = code


class StageChanged(ConfigError):
    """A finished stage's output was made from other inputs or settings than this run's."""


def content_key(settings: object, inputs: tuple[Path, ...] = ()) -> str:
    """sha256 of a stage's settings (JSON-able) and the bytes of its input files: what its output depends on."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(b"\0")
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


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
    only what failed; ``trust_outputs`` keeps "done when the output exists" while still recording the seconds,
    for steps that write their output only on success and stores that predate the timings file (the
    benchmarks' work dirs). ``until`` names the last stage to run (:class:`StoppedAfter` after it). With ``keys``
    (a JSON file of each finished stage's :func:`content_key`), a stage given a ``key`` is done only under the
    same key: a finished stage with another key raises :class:`StageChanged` rather than reuse stale output; one
    with no recorded key (made before keys were kept) is taken as made under this key."""

    def __init__(
        self,
        timings: Path | None = None,
        until: str | None = None,
        say: Callable[[str], None] = log.info,
        keys: Path | None = None,
        trust_outputs: bool = False,
    ):
        self.timings = timings
        self.trust_outputs = trust_outputs
        self.until = until
        self.say = say
        self.seconds: dict[str, float] = _read(timings)
        self.keys_file = keys
        self.keys: dict[str, str] = _read(keys)

    def run(self, output: Path, step: Callable[[], None], name: str | None = None, key: str | None = None) -> Path:
        """Run ``step`` (named ``name``, default the output's file name) unless done; ``output``."""
        name = name or output.name
        done = output.exists() and (self.timings is None or self.trust_outputs or name in self.seconds)
        if done and key is not None and self.keys.get(name, key) != key:
            raise StageChanged(
                f"stage {name}: {output} was made from other inputs or settings; use the run's settings, "
                "delete that output (and what follows from it), or choose another --out"
            )
        if done:
            self.say(f"stage {name}: done earlier ({output}), skipped")
        else:
            began = time.perf_counter()
            step()
            if not output.exists():
                raise RuntimeError(f"stage {name} finished without writing {output}")
            self.seconds[name] = round(time.perf_counter() - began, 1)
            if self.timings is not None:
                _write(self.timings, self.seconds)
            if key is not None and self.keys_file is not None:
                self.keys[name] = key
                _write(self.keys_file, self.keys)
        if name == self.until:
            raise StoppedAfter(name)
        return output


class StageProgress:
    """One log line per stage with its ETA (mean seconds of the stages run so far × those left, when the
    ``total`` planned is known; a job may set ``total`` as it learns it), and a Ray dashboard gauge per stage
    (1 running, 2 done)."""

    def __init__(
        self,
        gauge: str,
        total: int | None,
        say: Callable[[str], None] = log.info,
        on_done: Callable[[str, float], None] | None = None,
    ):
        self.total, self.say, self.done, self.spent = total, say, 0, 0.0
        self.on_done = on_done  # e.g. a W&B log of each stage's seconds
        self.gauge = None
        try:
            from ray.util.metrics import Gauge

            self.gauge = Gauge(gauge, "stage of a staged job: 1 running, 2 done", tag_keys=("stage",))
        except Exception:
            self.gauge = None

    def _set(self, name: str, value: float) -> None:
        if self.gauge is not None:
            self.gauge.set(value, tags={"stage": name})

    def stage(self, name: str):
        @contextlib.contextmanager
        def running():
            began = time.perf_counter()
            self._set(name, 1)
            try:
                yield
            except StoppedAfter:  # the stage finished; the job stops after it (``until``)
                self._finished(name, time.perf_counter() - began)
                raise
            self._finished(name, time.perf_counter() - began)

        return running()

    def _finished(self, name: str, seconds: float) -> None:
        self._set(name, 2)
        self.done += 1
        self.spent += seconds
        if self.total is None:
            self.say(f"stage {self.done} {name}: {seconds:.0f} s")
        else:
            left = max(self.total - self.done, 0)
            eta = self.spent / self.done * left
            self.say(f"stage {self.done}/{self.total} {name}: {seconds:.0f} s; ETA {eta / 60:.0f} min for {left} more")
        if self.on_done is not None:
            self.on_done(name, seconds)

    def finish(self) -> None:
        self.say(f"all {self.done} stages done in {self.spent / 60:.1f} min")


class Pipeline:
    """The stages of one job in the directory ``root``: a :class:`Stages` with its timings
    (``root/stage_seconds.json``) and keys (``root/stage_keys.json``), and a :class:`StageProgress` whose Ray
    gauge is ``gauge`` (``total``: stages planned, None when unknown). Every stage is keyed by
    :func:`content_key` of its settings and input files. A failed ``fgrlhf`` command ends the job with one line
    naming its stage and ``resume`` (how to go on); ``stdout_to_stderr``: the commands' JSON lines go to stderr.
    ``on_start(name)`` is called before a stage's step runs (not when it is skipped)."""

    def __init__(
        self,
        root: Path,
        gauge: str,
        total: int | None = None,
        *,
        say: Callable[[str], None] = log.info,
        until: str | None = None,
        resume: str = "re-run the same command to resume",
        stdout_to_stderr: bool = True,
        on_start: Callable[[str], None] | None = None,
        on_done: Callable[[str, float], None] | None = None,
        trust_outputs: bool = False,
    ):
        self.root, self.resume, self.stdout_to_stderr, self.on_start = root, resume, stdout_to_stderr, on_start
        self.stages = Stages(
            root / "stage_seconds.json", until, say, keys=root / "stage_keys.json", trust_outputs=trust_outputs
        )
        self.progress = StageProgress(gauge, total, say, on_done)

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds of each finished stage, this run's and the earlier runs' (as in ``stage_seconds.json``)."""
        return self.stages.seconds

    def stage(
        self,
        output: Path,
        step: Callable[[], None],
        name: str | None = None,
        key: object = None,
        inputs: tuple[Path, ...] = (),
    ) -> Path:
        """Run ``step`` unless done; ``key``: the settings (JSON-able) ``output`` depends on besides the bytes of
        the files ``inputs``. ``name`` defaults to the output's path under the root."""
        name = name or (str(output.relative_to(self.root)) if output.is_relative_to(self.root) else str(output))

        def run() -> None:
            if self.on_start is not None:
                self.on_start(name)
            try:
                step()
            except CommandFailed as exc:
                raise SystemExit(f"stage {name} failed (exit {exc.code}); fix the cause and {self.resume}") from None

        with self.progress.stage(name):
            return self.stages.run(output, run, name, key=content_key(key, inputs))

    def command(
        self, name: str | None, output: Path, argv: Sequence[object], key: object = None, inputs: tuple[Path, ...] = ()
    ) -> Path:
        """A stage that runs ``fgrlhf ARGV`` (:meth:`run_command`), done when it has written ``output``."""
        return self.stage(output, lambda: self.run_command(*argv), name, key, inputs)

    def run_command(self, *argv: object) -> None:
        """``fgrlhf ARGV`` in-process, for a step: its failure ends the job naming the stage it ran in."""
        run_command(*argv, stdout_to_stderr=self.stdout_to_stderr)

    def finish(self) -> None:
        self.progress.finish()


def _read(path: Path | None) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else {}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
