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
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ValidationError

from fgrlhf.config import ConfigError

log = logging.getLogger(__name__)

MANIFEST, CONFIG, RESUMES = "run.json", "config.yaml", "resumes.jsonl"
# What every trainer writes (metrics, TensorBoard, checkpoints, the exported model).
TRAINER_FILES = ("metrics.jsonl", "tb", "checkpoints", "final", "final.partial")
ABSENT = "(absent)"


class RunDirError(ConfigError):
    """``--out`` cannot be used as asked; the message names the directory and what to do."""


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
        """Mark the run finished; ``result`` is what a later ``--resume`` of it reports."""
        self.manifest = {**self.manifest, "status": "finished", "updated": _now(), "result": result}
        write_json_atomic(self.path / MANIFEST, self.manifest)

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
        """Yields an empty ``final.partial`` to export into; on success it replaces ``final``."""
        partial = self.path / "final.partial"
        shutil.rmtree(partial, ignore_errors=True)
        yield partial
        shutil.rmtree(self.final, ignore_errors=True)
        partial.rename(self.final)


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

    Reads only (no model, no Ray): call it before starting either. ``inputs`` adds input files that are
    not config keys (e.g. ``{"data": args.data}``).
    """
    import yaml

    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run or start it over")
    path = Path(path)
    config = cfg.model_dump(mode="json")
    flat = flatten(config)
    files = {**{key: flat[key] for key in spec.inputs if flat.get(key) is not None}, **(inputs or {})}
    digests = {key: file_digest(value) for key, value in files.items()}
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
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
    if not ours:
        raise RunDirError(f"{path} is not empty and holds no run ({_names(other)}); choose an empty or new --out")
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
