"""Configs in and out: the dict round trip, TOML files, ``--set key=value`` overrides, and which keys a
checkpoint lets ``--set`` change.

``config_to_dict`` / ``config_from_dict`` round-trip a ``Config`` exactly. The dict of a checkpoint, a
proposal file or a ``state.json`` written before the runtime keys left ``SolverConfig`` holds them too
(``solver.num_workers`` …): ``config_from_dict`` leaves them out, so they are never replayed. ``--set`` and
TOML files spell runtime keys ``runtime.<key>`` (or ``solver.<key>`` for the five of ``LEGACY_RUNTIME_KEYS``);
``Overrides.parse`` reads ``--set`` once into its config and runtime items, which it checks against a
checkpoint's ``TEST_TIME_KEYS`` and applies to a ``Config`` and a ``RuntimeConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .config import (
    LEGACY_RUNTIME_KEYS,
    PRESETS,
    RUNTIME_KEYS,
    TEST_TIME_KEYS,
    Config,
    RuntimeConfig,
    get_preset,
    runtime_defaults,
)
from .errors import ConfigError
from .file_kinds import other_kind, read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# --------------------------------------------------------------------------------------------------
# dict round trip


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A JSON-serialisable dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _without_runtime(data: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if k != "runtime"}
    if isinstance(data.get("solver"), dict):
        data["solver"] = {k: v for k, v in data["solver"].items() if k not in LEGACY_RUNTIME_KEYS}
    return data


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from a (possibly partial) dict; missing keys come from ``base`` or the defaults.
    Runtime keys in the dict (``runtime.*``, ``solver.num_workers`` …) are left out: never replayed."""
    data = _without_runtime(dict(data))
    if base is None and "name" not in data and "backbone" in data and data["backbone"] in PRESETS:
        base = PRESETS[data["backbone"]]
    return _build(Config, data, "", base if base is not None else Config())


def runtime_from_dict(data: dict[str, Any], base: RuntimeConfig) -> RuntimeConfig:
    """``base`` with the runtime keys of a config dict (a TOML file's ``[runtime]`` table and the legacy
    ``[solver]`` keys)."""
    values = {k: v for k, v in (data.get("solver") or {}).items() if k in LEGACY_RUNTIME_KEYS}
    table = data.get("runtime", {})
    if not isinstance(table, dict):
        raise ConfigError(f"config key 'runtime' must be a table of settings, got {table!r}; write it as a "
                          "[runtime] table of key = value lines")
    values.update(table)
    return _build(RuntimeConfig, values, "runtime.", base) if values else base


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table of settings, got {value!r}; write it as a "
                              f"[{key}] table of key = value lines")
        return _build(hint, value, key + ".")
    if origin is tuple:
        args = get_args(hint)
        items = value if isinstance(value, (list, tuple)) else [value]
        item_hint = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"config key '{key}' needs {len(args)} values, got {len(items)} "
                                  f"({value!r}); give {len(args)} comma-separated values")
        return tuple(_coerce(v, item_hint, key) for v in items)
    if origin in (Union, types.UnionType) and set(get_args(hint)) == {bool, type(None)}:
        return _coerce_switch(value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}; use true or false")
    if hint is int:
        return _coerce_int(value, key)
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}; give a number such as "
                              "0.001") from None
    if hint is str:
        return str(value)
    return value


def _coerce_switch(value: Any, key: str) -> bool | None:
    """A switch with an automatic default (``runtime.amp``): true, false, or auto (None: the machine decides)."""
    if value is None or isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ConfigError(f"config key '{key}' must be true, false or auto, got {value!r}; use true, false or auto")


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}; give a whole number")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}; give a whole number") from None


def _build(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """``cls`` from ``data`` (keys checked, values coerced), on top of ``base`` when given; the section checks
    itself when made (``config._Checked``)."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown config key '{key}'; use one of the keys allowed here: "
                          f"{', '.join(sorted(names))}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    if base is None:
        return cls(**values)
    for k in list(values):
        if dataclasses.is_dataclass(hints[k]) and isinstance(data[k], dict):
            values[k] = _build(hints[k], data[k], prefix + k + ".", getattr(base, k))
    return replace(base, **values)


# --------------------------------------------------------------------------------------------------
# files


def load_config_file(path: str | Path) -> tuple[Config, RuntimeConfig]:
    """A TOML file's config and runtime settings; ``preset = "name"`` at its top picks the base it overrides
    (default: the preset of its ``backbone``, else vgg16). A file's config fits its anchors to the training
    boxes (``anchors.auto = true``) unless it sets ``anchors.auto = false``."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text(path))  # a byte-order mark (UTF-8 or UTF-16) is not TOML
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; give a preset name or a .toml path") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = other_kind(path, "json")  # a TOML table opens with "[" too
        if kind is not None:
            raise ConfigError(f"config file {path} is {kind}, not a TOML config; give --config a preset name or a "
                              ".toml file") from None
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix the file") from None
    preset = data.pop("preset", None)
    base = get_preset(preset) if preset else get_preset(data.get("backbone", "vgg16"))
    # a config of one's own fits its anchors to the data unless it says otherwise (the paper presets keep theirs)
    base = replace(base, anchors=replace(base.anchors, auto=True))
    try:
        cfg = config_from_dict(data, base)
        return cfg, runtime_from_dict(data, runtime_defaults(cfg.name))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve_settings(spec: str | None) -> tuple[Config, RuntimeConfig]:
    """``--config``: a preset name, a .toml file, or None for the vgg16 preset; with its runtime defaults."""
    if spec is None:
        spec = "vgg16"
    if spec in PRESETS:
        return PRESETS[spec], runtime_defaults(spec)
    if spec.endswith(".toml") or Path(spec).exists():
        return load_config_file(spec)
    cfg = get_preset(spec)
    return cfg, runtime_defaults(cfg.name)


# --------------------------------------------------------------------------------------------------
# --set


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith(("[", "(")) and text.endswith(("]", ")")):
        inner = text[1:-1].strip()
        return [_parse_scalar(t) for t in inner.split(",") if t.strip()] if inner else []
    if "," in text:
        return [_parse_scalar(t) for t in text.split(",") if t.strip()]
    return text


def _split_item(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not key=value; write it as key=value, e.g. --set "
                          "rpn.nms_thresh=0.6")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def runtime_key(key: str) -> str | None:
    """The ``RuntimeConfig`` field a ``--set`` key names (``runtime.x``, or a legacy ``solver.x``), else None."""
    section, _, name = key.partition(".")
    if section == "runtime" or (section == "solver" and name in LEGACY_RUNTIME_KEYS):
        return name
    return None


@dataclass(frozen=True)
class Overrides:
    """``--set key=value`` items parsed once: ``config`` items (keys of ``Config``) and ``runtime`` items (keys
    of ``RuntimeConfig``: ``runtime.x`` or a legacy ``solver.x``), each ``(item, key, raw value)`` in the order
    given. One value carries them from the command line to where each kind applies::

        overrides = Overrides.parse(["roi_head.score_thresh=0.3", "runtime.num_workers=0"])
        overrides.check_test_time("model.pt")           # a checkpoint lets --set change only TEST_TIME_KEYS
        cfg = overrides.apply(model.cfg)                # the config items
        runtime = overrides.apply_runtime(RuntimeConfig())  # the runtime items
    """

    config: tuple[tuple[str, str, str], ...] = ()
    runtime: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, items: Overrides | Iterable[str] | None) -> Overrides:
        """``items`` (``key=value`` strings; an ``Overrides`` is returned as it is); a ``ConfigError`` for an
        item that is not ``key=value``."""
        if isinstance(items, Overrides):
            return items
        if isinstance(items, str):
            raise TypeError(f"overrides are a list of key=value strings, got the string {items!r}")
        config, runtime = [], []
        for item in items or ():
            key, raw = _split_item(item)
            (runtime if runtime_key(key) is not None else config).append((item, key, raw))
        return cls(tuple(config), tuple(runtime))

    def __bool__(self) -> bool:
        return bool(self.config or self.runtime)

    @property
    def config_items(self) -> list[str]:
        """The config items as given (``key=value``)."""
        return [item for item, _, _ in self.config]

    def check_test_time(self, checkpoint: str | Path, advice: str = "drop it") -> None:
        """A ``ConfigError`` for a config key a checkpoint fixes: on a trained model only ``TEST_TIME_KEYS``
        (and the runtime keys) may change. Reads nothing: called before the checkpoint is."""
        for item, key, raw in self.config:
            if key in TEST_TIME_KEYS:
                continue
            _apply_item(Config(), item, key, raw)  # an unknown key or a bad value is named as such first
            raise ConfigError(f"--set {item}: '{key}' is fixed by the checkpoint {checkpoint} (part of the model "
                              f"and its training recipe); here only the test-time keys ({', '.join(TEST_TIME_KEYS)})"
                              f" and the runtime keys (runtime.*) can change: {advice}")

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with the config items applied in order (the runtime items are ``apply_runtime``'s)."""
        for item, key, raw in self.config:
            cfg = _apply_item(cfg, item, key, raw)
        return cfg

    def apply_runtime(self, runtime: RuntimeConfig) -> RuntimeConfig:
        """``runtime`` with the runtime items applied in order."""
        for item, key, raw in self.runtime:
            try:
                runtime = _build(RuntimeConfig, {runtime_key(key): _parse_scalar(raw)}, "runtime.", runtime)
            except ConfigError as exc:
                raise ConfigError(f"--set {item}: {exc}") from None
        return runtime


def _apply_item(cfg: Config, item: str, key: str, raw: str) -> Config:
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = _parse_scalar(raw)
    try:
        return _build(Config, nested, "", cfg)
    except ConfigError as exc:
        raise ConfigError(f"--set {item}: {exc}") from None


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``key=value`` strings such as ``rpn.nms_thresh=0.6`` or ``anchors.scales=4,8,16`` to ``cfg``.
    A runtime key is a ``ConfigError``: it belongs to ``apply_runtime_overrides`` (``Overrides`` takes both)."""
    for item in overrides:
        key, raw = _split_item(item)
        if runtime_key(key) is not None:
            raise ConfigError(f"--set {item}: '{key}' is a runtime setting of this machine, not part of the "
                              "model's config; give it to the command that runs (frcnn_cli.config_io."
                              "apply_runtime_overrides)")
        cfg = _apply_item(cfg, item, key, raw)
    return cfg


def apply_runtime_overrides(runtime: RuntimeConfig, overrides: Iterable[str]) -> RuntimeConfig:
    """Apply runtime ``key=value`` strings (``runtime.num_workers=0``, ``solver.amp=false``) to ``runtime``."""
    for item in overrides:
        key, raw = _split_item(item)
        if runtime_key(key) is None:
            raise ConfigError(f"--set {item}: '{key}' is not a runtime key; use one of "
                              f"{', '.join('runtime.' + k for k in RUNTIME_KEYS)}")
        runtime = Overrides(runtime=((item, key, raw),)).apply_runtime(runtime)
    return runtime
