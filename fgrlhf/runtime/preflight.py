"""Checks of a command's input paths that run before Ray or any model starts.

Each problem is a :class:`~fgrlhf.config.ConfigError` naming the flag or config key, which the ``fgrlhf``
command prints as one line with exit status 2 (a missing reward model was otherwise found about a minute
later, inside a Ray actor, under a traceback).
"""

from __future__ import annotations

from pathlib import Path

from fgrlhf.config import ConfigError

BUILTIN_MODELS = ("tiny", "smollm2")


def check_data(path: str | Path, what: str) -> None:
    """``path`` (given as ``what``: a flag or config key) is a data file, a datasets directory or a Hub id
    (``hf:REPO``, whose existence only the load can tell)."""
    from fgrlhf.data.loading import is_datasets_dir, is_hub_id, resolve_data_path

    if is_hub_id(path):
        return
    resolved = resolve_data_path(path)
    if not resolved.exists():
        raise ConfigError(f"{what}: {path}: no such file")
    if resolved.is_dir() and not is_datasets_dir(resolved):
        raise ConfigError(
            f"{what}: {path}: is a directory; expected a JSONL, JSON or parquet file (or a directory "
            "written by datasets' save_to_disk)"
        )


def check_file(path: str | Path, what: str) -> None:
    """``path`` is an existing regular file (rules files, reports read back)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what}: {path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{what}: {path}: is a directory, expected a file")


def check_model(name: str, what: str, also: tuple[str, ...] = ()) -> None:
    """``name`` is a built-in model (``tiny``, ``smollm2``, or one of ``also``) or an HF checkpoint directory."""
    if name in BUILTIN_MODELS or name in also:
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(f"{what}: {name}: no such model directory")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{what}: {name}: not a model directory (no config.json); expected "
            f"{', '.join(BUILTIN_MODELS + also)} or an HF checkpoint directory"
        )


def check_reward_model(path: str, what: str, also: tuple[str, ...] = ()) -> None:
    """``path`` is a reward-model directory written by ``fgrlhf train-rm`` (or one of the names ``also``)."""
    if path in also:
        return
    directory = Path(path).expanduser()
    if not directory.exists():
        raise ConfigError(f"{what}: {path}: no such reward-model directory")
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"{what}: {path}: not a reward-model directory (no config.json); expected train-rm's DIR/final"
        )
