"""What a rerun of ``frcnn train`` asks differently from the run its folder holds, option by option.

A run folder's ``state.json`` records the options a run was started with (``pipeline.run_record``); a rerun
that asks for anything else is refused, and the refusal names each option that differs with its two values
("--iters 4 when the run started, 5 now", "--set solver.lr 0.01 when the run started, 0.02 now"). A data or
validation manifest that is the same file but other content ("changed since the run started") is said so,
with both hashes. A run that never trained an iteration holds nothing to lose, so ``nothing_trained`` lets
the pipeline start it afresh instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, DataError

MAX_KEYS_SHOWN = 4  # config keys listed one by one; the rest are counted
# state.json keys of the options, in the order a refusal lists them
OPTIONS = (("mode", "--mode"), ("iters", "--iters"), ("epochs", "--epochs"), ("time", "--time"), ("val", "--val"),
           ("val_every", "--val-every"), ("patience", "--patience"))


def _shown(value: object) -> str:
    """A value as the command line spells it (``false``, ``8.0,16.0,32.0``)."""
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def _same_file(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return a == b or os.path.abspath(a) == os.path.abspath(b)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_differences(was: dict, now: dict) -> list[str]:
    """``--config``, ``--seed`` and each ``--set`` key whose value differs (another preset: the preset alone,
    with the count of keys that differ with it)."""
    a, b = _flat(was), _flat(now)
    names = {"name": "--config", "seed": "--seed"}
    keys = [k for k in sorted(set(a) | set(b), key=lambda k: (k not in names, k)) if a.get(k) != b.get(k)]
    limit = 1 if "name" in keys else MAX_KEYS_SHOWN
    shown = [f"{names.get(k, '--set ' + k)} {_shown(a.get(k))} when the run started, {_shown(b.get(k))} now"
             for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"and {len(keys) - limit} more config keys")
    return shown


def _changed(option: str, path: str, was_hash: str, now_hash: str) -> DataError:
    return DataError(f"{option} {path} changed since the run started (content hash {was_hash[:12]}… then, "
                     f"{now_hash[:12]}… now); restore it or use another --workdir")


def check_data(state: dict, now: dict, workdir: Path) -> None:
    """The training and validation manifests of a rerun: the same content, or a ``DataError`` saying which."""
    if state["manifest_hash"] != now["manifest_hash"]:
        if _same_file(state.get("manifest"), now["manifest"]):
            raise _changed("--data", now["manifest"], state["manifest_hash"], now["manifest_hash"])
        raise DataError(f"{workdir} holds a run on another dataset than {now['manifest']} (--data "
                        f"{_shown(state.get('manifest'))} when the run started); use another --workdir or the "
                        "original manifest")
    if state.get("val_hash") != now["val_hash"] and state.get("val_hash") and now["val_hash"] and _same_file(
            state.get("val"), now["val"]):
        raise _changed("--val", now["val"], state["val_hash"], now["val_hash"])


def option_differences(state: dict, now: dict) -> list[str]:
    """Each option of ``now`` (a ``run_record``) that differs from the run's ``state``, with both values."""
    differs = {key: state.get(key) != now[key] for key, _ in OPTIONS}
    differs["val"] = state.get("val_hash") != now["val_hash"]  # the same content under another name is no change
    out = [f"{flag} {_shown(state.get(key))} when the run started, {_shown(now[key])} now"
           for key, flag in OPTIONS if differs[key]]
    return out + _config_differences(state["config"], now["config"])


def refusal(differences: list[str], workdir: Path, state_path: Path) -> ConfigError:
    return ConfigError(f"{workdir} holds a run started with other options ({'; '.join(differences)}; see "
                       f"{state_path}); rerun it with the same options or use another --workdir")


def nothing_trained(state: dict, workdir: Path) -> bool:
    """The run in ``workdir`` never trained an iteration (its first attempt failed at the start): no step
    done, no resumable state, no line in ``metrics.jsonl``; starting it afresh loses nothing."""
    if state.get("done"):
        return False
    if any(workdir.glob("*.resume.pt")) or any(workdir.glob("*.partial")):
        return False
    metrics = workdir / "metrics.jsonl"
    return not (metrics.exists() and metrics.stat().st_size > 0)
