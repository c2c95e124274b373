"""One run directory per training command (``ppo``, ``train-rm``, ``figa``, ``figa-data``): what it holds,
when a command may write into it, and the files every trainer writes the same way.

Layout of ``--out``::

    run.json          manifest: command, status (running | finished), created/updated times, config hash,
                      content hashes of the input files, and the command's result once finished
    config.yaml       the resolved config the run (last) ran with
    resumes.jsonl     one line per --resume: time, status before, config keys changed (old -> new)
    metrics.jsonl     one JSON object per step (trainers); tb/ the same as TensorBoard scalars
    checkpoints/step_N/   complete once its state file exists (written last, atomically)
    final/            the exported model, staged in final.partial/ and renamed, so it is never half-written
    ...               the command's own files (RunSpec.owned), e.g. eval.json, rollouts.jsonl

Opening ``--out`` (:func:`open_run`, before Ray or any model starts; nothing is written until
:meth:`RunDir.start`):

- missing or empty: a new run;
- holding a run of this command (finished or not) or other files: refused, unless
  ``--resume``: continue the run (a finished one whose config did not change is not redone: the command
  reports its saved result), or
  ``--overwrite``: start over, removing the old run's own files; never other files (refused if any);
- on ``--resume``, the new config is compared with the saved ``config.yaml``. Only the keys in
  ``RunSpec.changeable`` may differ (run length, checkpointing, logging, resources); every other key changes
  what the run computes (seed, batch sizes, models, data, loss, ...) and is refused with a ``key: old -> new``
  diff. Input files (``RunSpec.inputs`` and a command's extra inputs such as ``train-rm --data``) are
  compared by content (sha256), so moving a file is fine and editing it is not. Accepted changes are logged
  and appended to ``resumes.jsonl``.

Sharing ``--out``, a disk, or a Ray job's working directory:

- :func:`check_out_dir`: a relative ``--out`` resolves against ``$FGRLHF_STORAGE_ROOT`` when that is set; inside
  a Ray job without it, it is refused (it would land in Ray's temporary copy of the working directory).
- ``DIR/.lock`` (``flock``) is held from :func:`open_run` until the run finishes or its process ends; its body
  names the holder (host, pid, start time, command). A second run into a locked directory is refused, naming
  the holder, ``--resume`` included. A body left behind by a process that died without releasing the lock
  (``kill -9``, a stopped Ray job) is a stale lock: reported, and taken over only by ``--resume`` or
  ``--overwrite``.
- :meth:`RunDir.check_space`: before the first step, the free space under ``--out`` must hold what the run
  will still write (kept checkpoints, the one being written, the final export, sized by
  :mod:`fgrlhf.runtime.planning`); ``--force`` runs anyway. A checkpoint or export that still fails for
  space (:meth:`RunDir.space_guard`, also when the error comes from a Ray actor) marks ``run.json`` failed
  and ends in one line naming the path, the bytes needed and ``--resume``.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ValidationError

from fgrlhf.config import ConfigError

log = logging.getLogger(__name__)

MANIFEST, CONFIG, RESUMES, LOCK = "run.json", "config.yaml", "resumes.jsonl", ".lock"
# A relative --out resolves against this directory when it is set (the way to use relative paths in a Ray job).
STORAGE_ROOT_ENV = "FGRLHF_STORAGE_ROOT"
# Set by Ray's job supervisor for a submitted job's entrypoint (ray/dashboard/modules/job/job_supervisor.py,
# Ray 2.60): JSON with the job's runtime_env and metadata, whose "job_submission_id" names the job.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Free bytes below which an I/O error without an errno counts as a full disk when the write's size is unknown.
NEARLY_FULL = 1 << 20
# What every trainer writes (metrics, TensorBoard, checkpoints, the exported model).
TRAINER_FILES = ("metrics.jsonl", "tb", "checkpoints", "final", "final.partial")
ABSENT = "(absent)"


class RunDirError(ConfigError):
    """``--out`` cannot be used as asked; the message names the directory and what to do."""


class DiskFullError(RunDirError):
    """A checkpoint or export did not fit on the disk; the message names the path, the bytes needed and --resume."""


# --- where --out is ---------------------------------------------------------------------------------------
def ray_job_id() -> str | None:
    """The submission id of the Ray job this process is the entrypoint of (``unknown`` if unreadable), else None."""
    raw = os.environ.get(RAY_JOB_ENV)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (json.JSONDecodeError, AttributeError):
        return "unknown"
    return str(metadata.get("job_submission_id") or "unknown")


def check_out_dir(out: str | os.PathLike, *, what: str = "--out") -> Path:
    """Where ``out`` really is. Absolute: itself. Relative: under ``$FGRLHF_STORAGE_ROOT`` when set; inside a
    Ray job without it, refused (:class:`ConfigError`): the job runs in Ray's temporary copy of the working
    directory, deleted with the job, and the run would go with it; else relative to the current directory."""
    path = Path(out).expanduser()
    if path.is_absolute():
        return path
    root = os.environ.get(STORAGE_ROOT_ENV)
    if root:
        base = Path(root).expanduser()
        if not base.is_absolute():
            raise ConfigError(f"{STORAGE_ROOT_ENV}={root} must be an absolute path")
        return base / path
    job = ray_job_id()
    if job is not None:
        raise ConfigError(
            f"{what} {out} is relative inside the Ray job {job}: it would land in Ray's temporary copy of the "
            f"working directory ({Path.cwd()}), which is deleted with the job; give an absolute path on storage "
            f"that outlives the job, or set {STORAGE_ROOT_ENV} (e.g. in the job's runtime_env env_vars) to "
            "resolve relative paths against it"
        )
    return path


# --- the lock ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _read_body(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text[:200]}
    return body if isinstance(body, dict) else {"raw": text[:200]}


def describe_holder(body: dict[str, Any]) -> str:
    if not body:
        return "holder not recorded yet"
    if "raw" in body:
        return f"unreadable lock body {body['raw']!r}"
    return f"host {body.get('host')}, pid {body.get('pid')}, since {body.get('started')}: `{body.get('command')}`"


def _release(handle: IO[str]) -> None:
    """Clear the body (a clean end leaves no stale lock) and close, which drops the flock."""
    if handle.closed:
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.flush()
    except OSError:  # a full disk must not hide the run's own error; an empty-bodied lock is never stale
        pass
    handle.close()


class RunLock:
    """``DIR/.lock``: an exclusive ``flock`` plus a JSON body naming the holder. The flock goes with the process
    (also on ``kill -9``); the body stays when the process dies without :meth:`release`, which is how a
    stale lock is told from a released one."""

    _held: ClassVar[
        dict[Path, RunLock]
    ] = {}  # this process's locks: a re-open of the same dir (a stage re-run) replaces

    def __init__(self, path: Path, handle: IO[str]):
        self.path = path
        self._handle = handle
        self._finalizer = weakref.finalize(self, _release, handle)  # also at interpreter exit

    @classmethod
    def acquire(cls, directory: Path, *, take_over_stale: bool) -> RunLock:
        """Lock ``directory`` (created if missing). Refused (:class:`RunDirError`) while another process holds
        it, and for a stale lock unless ``take_over_stale``."""
        key = directory.resolve()
        if key in cls._held:  # this process is done with its earlier run of this directory
            cls._held.pop(key).release()
        path = directory / LOCK
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held for the run's lifetime
        except OSError as exc:
            raise RunDirError(f"cannot create {path} ({exc.strerror}); choose a writable --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            body = _read_body(handle)
            handle.close()
            raise RunDirError(
                f"{directory} is in use by a live run ({describe_holder(body)}); wait for it to end or choose "
                "another --out"
            ) from None
        except OSError as exc:  # a filesystem without flock (some network or FUSE mounts)
            log.warning("%s: cannot lock it (%s); a second run into it would not be refused", path, exc)
        stale = _read_body(handle)
        if stale:
            if stale.get("host") != socket.gethostname():
                why = "its lock is released; its host cannot be checked from here"
            elif _pid_alive(int(stale.get("pid", -1))):
                why = f"pid {stale.get('pid')} is alive but no longer holds the lock"
            else:
                why = f"pid {stale.get('pid')} is no longer running"
            if not take_over_stale:
                handle.close()  # the flock goes, the body stays: still stale for the next try
                raise RunDirError(
                    f"{directory} has a stale lock: the run of {describe_holder(stale)} ended without releasing "
                    f"it ({why}); its files are as it left them: pass --resume to continue it or --overwrite "
                    "to start it over"
                )
            log.warning("%s: taking over the stale lock of %s (%s)", directory, describe_holder(stale), why)
        handle.seek(0)
        handle.truncate()
        body = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "command": " ".join(sys.argv)}
        handle.write(json.dumps(body) + "\n")
        handle.flush()
        lock = cls(directory, handle)
        cls._held[key] = lock
        return lock

    def release(self) -> None:
        self._finalizer()
        RunLock._held.pop(self.path.resolve(), None)


@dataclass(frozen=True)
class RunSpec:
    """A command's run-directory policy (see the module docstring)."""

    command: str
    # Dotted config keys (fnmatch patterns; a pattern also covers the keys below it) that --resume may change.
    changeable: tuple[str, ...]
    # Changeable keys whose change gives a finished run more work (e.g. ``steps``); other changes to a finished
    # run are reported and ignored.
    extends: tuple[str, ...] = ()
    # A finished run is resumed anyway (its stages skip what is done) instead of reporting its saved result.
    rerun_finished: bool = False
    # Top-level names (fnmatch patterns) the command writes, beyond run.json, config.yaml and resumes.jsonl.
    owned: tuple[str, ...] = TRAINER_FILES
    # Config keys naming input files, compared by content rather than by path.
    inputs: tuple[str, ...] = ()
    # The file whose presence marks a checkpoint complete.
    state_file: str = "state.json"

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in (MANIFEST, CONFIG, RESUMES, *self.owned))


def _covered(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, p + ".*") for p in patterns)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping stays a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ, as ``key: (old, new)`` (ABSENT where a side lacks the key)."""
    a, b = flatten(old), flatten(new)
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def _with_defaults(cfg: BaseModel, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added since it was written filled in with their defaults, so that a new
    key left at its default is not a change; a config the current model no longer accepts stays as saved."""
    try:
        return type(cfg).model_validate(saved).model_dump(mode="json")
    except ValidationError:
        return saved


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {key}: {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in changes.items())


def file_digest(path: str) -> dict[str, Any]:
    """``{"path", "sha256"}`` of an input file (sha256 None for what is not a plain file, e.g. a dataset dir)."""
    from fgrlhf.data.loading import resolve_data_path

    resolved = resolve_data_path(path)
    if not resolved.is_file():
        return {"path": str(path), "sha256": None}
    digest = hashlib.sha256()
    with resolved.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest()}


def write_json_atomic(path: Path, data: Any) -> None:
    """Temp file + rename: a reader (or a crash) never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --- checkpoints ------------------------------------------------------------------------------------------
class Checkpoint(NamedTuple):
    step: int
    path: Path
    state: dict[str, Any]


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (root / "checkpoints").glob("step_*"):
        suffix = path.name.removeprefix("step_")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def latest_checkpoint(root: str | Path, state_file: str = "state.json") -> Checkpoint | None:
    """The newest complete ``checkpoints/step_N`` under ``root`` (one whose state file was written)."""
    complete = [(step, path) for step, path in _step_dirs(Path(root)) if (path / state_file).is_file()]
    if not complete:
        return None
    step, path = complete[-1]
    return Checkpoint(step, path, json.loads((path / state_file).read_text(encoding="utf-8")))


# --- metrics ----------------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl`` + TensorBoard (``tb/``). Resuming at ``resume_step`` drops the records after it from
    both (those steps are redone); ``history`` holds the records kept and those written since."""

    def __init__(self, root: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = root / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history), encoding="utf-8")
        self.writer = SummaryWriter(str(root / "tb"), purge_step=resume_step + 1)

    def write(self, record: dict[str, Any], scalars: dict[str, float]) -> None:
        """Append ``record`` (flushed at once) and log ``scalars`` (TensorBoard tag -> value) at its step."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()
        self.history.append(record)

    def close(self) -> None:
        self.writer.close()


# --- the run directory ------------------------------------------------------------------------------------
@dataclass
class RunDir:
    """An opened ``--out``: see :func:`open_run`. Call :meth:`start` before writing, :meth:`finish` at the end."""

    path: Path
    spec: RunSpec
    config: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    mode: Literal["new", "resume", "overwrite"]
    manifest: dict[str, Any] = field(default_factory=dict)  # the existing run's run.json ({} if none)
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # accepted on --resume
    lock: RunLock | None = None  # held until finish() or the process ends
    # Bytes of one checkpoint and of the final export (fgrlhf.runtime.planning), once check_space knows them.
    sizes: tuple[float, float] | None = None

    @property
    def done(self) -> bool:
        """A finished run that --resume leaves as it is (its saved result stands)."""
        return (
            self.mode == "resume"
            and self.manifest.get("status") == "finished"
            and not self.spec.rerun_finished
            and not any(_covered(key, self.spec.extends) for key in self.changes)
        )

    @property
    def result(self) -> dict[str, Any] | None:
        return self.manifest.get("result")

    @property
    def final(self) -> Path:
        return self.path / "final"

    def start(self) -> None:
        """Claim the directory: remove the old run's files (--overwrite), write config.yaml and run.json, and
        on --resume log the accepted changes and append them to resumes.jsonl."""
        if self.done:
            raise RuntimeError(f"{self.path}: the run is finished; nothing to start")
        if self.mode == "overwrite":
            for entry in self.path.iterdir():
                if not self.spec.owns(entry.name):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            log.info("--overwrite: removed the previous run's files from %s", self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.mode == "resume":
            for key, (old, new) in self.changes.items():
                log.info("--resume: %s changed from %s to %s", key, json.dumps(old), json.dumps(new))
            with (self.path / RESUMES).open("a", encoding="utf-8") as handle:
                handle.write(
                    json.dumps(
                        {
                            "time": _now(),
                            "status_before": self.manifest.get("status"),
                            "changes": {k: [o, n] for k, (o, n) in self.changes.items()},
                        }
                    )
                    + "\n"
                )
        _write_yaml(self.config, self.path / CONFIG)
        created = self.manifest.get("created") if self.mode == "resume" else None
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()
        self.manifest = {
            "command": self.spec.command,
            "status": "running",
            "created": created or _now(),
            "updated": _now(),
            "config_sha256": digest,
            "inputs": self.inputs,
        }
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def finish(self, result: dict[str, Any]) -> None:
        """Mark the run finished (``result`` is what a later ``--resume`` of it reports) and release the lock."""
        self.manifest = {**self.manifest, "status": "finished", "updated": _now(), "result": result}
        write_json_atomic(self.path / MANIFEST, self.manifest)
        if self.lock is not None:
            self.lock.release()

    def fail(self, reason: str) -> None:
        """Mark the run failed with ``reason`` (``--resume`` continues it from its last complete checkpoint)."""
        self.manifest = {**self.manifest, "status": "failed", "updated": _now(), "error": reason}
        try:
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except OSError:  # no room for a second copy: rewrite it in place, reusing its blocks
            try:
                (self.path / MANIFEST).write_text(json.dumps(self.manifest) + "\n", encoding="utf-8")
            except OSError as exc:
                log.error("could not mark %s failed: %s", self.path / MANIFEST, exc)

    # disk space
    def check_space(self, plan: Callable[[], Any], force: bool) -> None:
        """Refuse (:class:`RunDirError`) a run whose remaining writes do not fit in the free space under
        ``--out``. ``plan()`` returns the :class:`fgrlhf.runtime.planning.Job` of the config (its checkpoint
        and export sizes); a job the plan cannot size here (a model only the cluster has) is not checked."""
        from fgrlhf.runtime.planning import PlanError

        try:
            job = plan()
        except PlanError as exc:
            log.warning("disk check skipped: %s", exc)
            return
        self.sizes = (job.checkpoint, job.final)
        # Peak: the kept checkpoints plus the one being written (committed before the oldest goes), or the kept
        # ones plus the final export; what this run dir already holds of them is replaced, not added.
        peak = max((job.keep_checkpoints + 1) * job.checkpoint, job.keep_checkpoints * job.checkpoint + job.final)
        held = sum(_du(self.path / name) for name in ("checkpoints", "final"))
        need = peak - held
        free = shutil.disk_usage(self.path).free
        if need <= free:
            log.info("disk: %s needs up to %s more, %s free", self.path, _size(need), _size(free))
            return
        message = (
            f"{self.path} has {_size(free)} free, but the run will write up to {_size(need)} more "
            f"({job.keep_checkpoints} kept checkpoint(s) + 1 being written of {_size(job.checkpoint)} each, "
            f"final export {_size(job.final)}); free space or choose another --out"
        )
        if force:
            log.warning("%s (--force: running anyway)", message)
            return
        raise RunDirError(message + ", or pass --force to run anyway")

    @contextmanager
    def space_guard(self, target: Path, what: str) -> Iterator[None]:
        """Around a checkpoint or export into ``target``: a write that fails for lack of space (``ENOSPC`` from
        this process or, wrapped by Ray, from an actor; or an I/O error on a filesystem with less free space
        than the write needs) marks the run failed and becomes one :class:`DiskFullError` line."""
        try:
            yield
        except Exception as exc:
            need = self._need(what)
            free = shutil.disk_usage(self.path).free
            if not (_is_enospc(exc) or (_is_io_error(exc) and free < (need if need is not None else NEARLY_FULL))):
                raise
            last = latest_checkpoint(self.path, self.spec.state_file)
            needed = f"about {_size(need)}" if need is not None else f"more than the {_size(free)} left"
            message = (
                f"no space left writing the {what} {target}: it needs {needed} ({_size(free)} free under "
                f"{self.path}); free space, then re-run with --resume to continue from "
                + (f"the last complete checkpoint ({last.path.name})" if last else "the start (no complete checkpoint)")
            )
            self.fail(message)
            raise DiskFullError(message) from exc

    def _need(self, what: str) -> float | None:
        if self.sizes is not None:
            return self.sizes[0] if what == "checkpoint" else self.sizes[1]
        last = latest_checkpoint(self.path, self.spec.state_file)  # unplanned: as big as the last one
        return float(_du(last.path)) if last is not None and what == "checkpoint" else None

    # checkpoints
    def resume_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to continue from: the latest complete one on --resume, else None."""
        return latest_checkpoint(self.path, self.spec.state_file) if self.mode == "resume" else None

    def checkpoint_dir(self, step: int) -> Path:
        """An empty ``checkpoints/step_N`` to save into (a leftover incomplete one is removed)."""
        path = self.path / "checkpoints" / f"step_{step}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit_checkpoint(self, path: Path, state: dict[str, Any], keep: int) -> None:
        """Write ``state`` (last, atomically: it marks the checkpoint complete), then keep only the ``keep``
        newest complete checkpoints and drop incomplete ones older than the newest."""
        write_json_atomic(path / self.spec.state_file, state)
        complete = [(s, p) for s, p in _step_dirs(self.path) if (p / self.spec.state_file).is_file()]
        newest = complete[-1][0]
        stale = complete[:-keep] + [
            (s, p) for s, p in _step_dirs(self.path) if s < newest and not (p / self.spec.state_file).is_file()
        ]
        for _, old in stale:
            shutil.rmtree(old, ignore_errors=True)

    # outputs
    def metrics(self, resume_step: int) -> MetricsLog:
        return MetricsLog(self.path, resume_step)

    @contextmanager
    def staging_final(self) -> Iterator[Path]:
        """Yields an empty ``final.partial`` to export into; on success it replaces ``final``. A full disk
        during the export ends as :meth:`space_guard` says."""
        partial = self.path / "final.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with self.space_guard(partial, "final export"):
            yield partial
        shutil.rmtree(self.final, ignore_errors=True)
        partial.rename(self.final)


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the actor-side exception a Ray error wraps (``.cause``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause = getattr(e, "cause", None)
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]


def _is_enospc(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _chain(exc))


def _is_io_error(exc: BaseException) -> bool:
    """An error that may be a full disk without saying so: torch.save's C++ writer raises RuntimeError
    ("basic_ios::clear: iostream error", "file write failed") without an errno."""
    return any(
        isinstance(e, OSError) or (isinstance(e, RuntimeError) and ("iostream error" in str(e) or "write" in str(e)))
        for e in _chain(exc)
    )


def _write_yaml(config: dict[str, Any], path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); restore it or choose another --out") from None


def open_run(
    path: str | Path,
    spec: RunSpec,
    cfg: BaseModel,
    *,
    resume: bool = False,
    overwrite: bool = False,
    inputs: dict[str, str] | None = None,
) -> RunDir:
    """Apply the ``--out`` policy of the module docstring; raises :class:`RunDirError` when refused.

    Reads only (no model, no Ray), apart from taking ``DIR/.lock`` (see the module docstring): call it before
    starting either. ``inputs`` adds input files that are not config keys (e.g. ``{"data": args.data}``).
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run or start it over")
    path = check_out_dir(path)
    config = cfg.model_dump(mode="json")
    flat = flatten(config)
    files = {**{key: flat[key] for key in spec.inputs if flat.get(key) is not None}, **(inputs or {})}
    digests = {key: file_digest(value) for key, value in files.items()}
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory")
    if path.is_dir() and not any(spec.owns(p.name) for p in path.iterdir() if p.name != LOCK) and _entries(path):
        # refused before the lock, so that no .lock is left in someone's unrelated directory
        raise RunDirError(
            f"{path} is not empty and holds no run ({_names(_entries(path))}); choose an empty or new --out"
        )
    lock = RunLock.acquire(path, take_over_stale=resume or overwrite)
    try:
        run = _open_locked(path, spec, cfg, config, digests, resume=resume, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    run.lock = lock
    return run


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK)


def _open_locked(
    path: Path,
    spec: RunSpec,
    cfg: BaseModel,
    config: dict[str, Any],
    digests: dict[str, dict[str, Any]],
    *,
    resume: bool,
    overwrite: bool,
) -> RunDir:
    import yaml

    entries = _entries(path)
    ours = [name for name in entries if spec.owns(name)]
    other = [name for name in entries if not spec.owns(name)]
    manifest = _read_manifest(path / MANIFEST) if MANIFEST in ours else {}
    if manifest and manifest.get("command") != spec.command:
        raise RunDirError(
            f"{path} holds a `fgrlhf {manifest.get('command')}` run, not a `fgrlhf {spec.command}` "
            "one; choose another --out"
        )
    if not entries:
        if resume:
            log.info("--resume: %s holds no run yet; starting a new one", path)
        return RunDir(path, spec, config, digests, "new")
    status = manifest.get("status", "unknown")
    if overwrite:
        if other:
            raise RunDirError(
                f"--overwrite removes only the old run's files, but {path} also holds "
                f"{_names(other)}; move them away or choose another --out"
            )
        return RunDir(path, spec, config, digests, "overwrite", manifest)
    if not resume:
        raise RunDirError(
            f"{path} already holds a {spec.command} run ({status}); pass --resume to continue it "
            "or --overwrite to start it over (removes that run's files), or choose another --out"
        )

    changes = (
        config_diff(_with_defaults(cfg, yaml.safe_load((path / CONFIG).read_text(encoding="utf-8")) or {}), config)
        if CONFIG in ours
        else {}
    )
    moved, edited = set(), set()  # input files at another path with the same content / with other content
    for key, now in digests.items():
        before = manifest.get("inputs", {}).get(key)
        if before is None:  # a run made before run.json: only its config.yaml can be compared
            continue
        if before["path"] != now["path"]:
            changes.setdefault(key, (before["path"], now["path"]))
        if before["sha256"] and now["sha256"]:
            if before["sha256"] == now["sha256"]:
                moved.add(key)
            else:
                edited.add(f"{key} (content sha256)")
                changes[f"{key} (content sha256)"] = (before["sha256"][:12], now["sha256"][:12])
    refused = {k: v for k, v in changes.items() if k in edited or (k not in moved and not _covered(k, spec.changeable))}
    if refused:
        raise RunDirError(
            f"--resume: {path} holds a {spec.command} run made with other settings that change "
            f"what it computes:\n{describe(refused)}\nuse the run's settings, --overwrite to start "
            "it over, or choose another --out"
        )
    run = RunDir(path, spec, config, digests, "resume", manifest, changes)
    if run.done:
        log.info(
            "--resume: %s finished earlier with these settings; nothing to do%s",
            path,
            f" (changes ignored: {', '.join(changes)})" if changes else "",
        )
    return run


# What Ctrl-C keeps of a checkpointed run and how to go on: the RESUME_HINT of every command that takes
# add_run_arguments' flags (printed by fgrlhf.cli).
RESUME_HINT = "checkpoints written so far are kept; re-run the same command with --resume to continue"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--overwrite`` with the same help everywhere."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest complete checkpoint (a finished run with "
        "unchanged settings reports its result); settings that change what the run computes "
        "must match the saved config.yaml",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a used --out, removing only the previous run's own files",
    )


def add_launch_arguments(parser: argparse.ArgumentParser, force_help: str) -> None:
    """``--num-cpus`` and ``--force``, the same for every trainer command; ``force_help``: what a forced run
    overrides in that command."""
    parser.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs of the local Ray instance started when RAY_ADDRESS is unset"
    )
    parser.add_argument("--force", action="store_true", help=force_help)
