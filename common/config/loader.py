"""Resolving a ``Config``: a TOML file, then ``LUFFY_*`` environment variables, then dotted CLI
overrides (``--learner.lr 1e-5``), validated once. Every key remembers where it came from, so
an unknown or invalid key is reported with its source and, for a typo, the closest real key.
``write_resolved`` leaves the result in the run folder."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from common.config.sections import Config

ENV_PREFIX = "LUFFY_"
# Environment variables that carry something other than a config key.
RESERVED_ENV = {"LUFFY_CONFIG"}


class ConfigError(ValueError):
    """A configuration problem, with the offending key and where it came from."""


def _parse_scalar(raw: str) -> Any:
    """CLI/env values are strings; pydantic coerces scalars. Lists/objects arrive as JSON."""
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"value {raw!r} looks like JSON but does not parse: {exc}") from exc
    if text.lower() in {"none", "null"}:
        return None
    return raw


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".")]
    if not all(parts):
        raise ConfigError(f"malformed key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        flat[dotted] = value
    return flat


def env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``LUFFY_LEARNER__LR=1e-5`` -> ``{"learner.lr": ("1e-5", "env LUFFY_LEARNER__LR")}``."""
    out: dict[str, tuple[str, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        out[dotted] = (raw, f"env {name}")
    return out


def cli_overrides(args: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``["--learner.lr", "1e-5", "--run.name=x"]`` -> dotted overrides. Flags need a dot."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(
                f"unexpected argument {arg!r}: overrides look like --section.key VALUE"
            )
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 1
        else:
            raise ConfigError(f"flag {arg!r} has no value")
        if "." not in key:
            raise ConfigError(f"unknown option {arg!r} (config overrides look like --section.key)")
        out[key.replace("-", "_")] = (raw, f"CLI --{key}")
        i += 1
    return out


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: ``Section``, or ``Section | None`` for a section that is off
    unless present (``[learner.lora]``, ``[tracking.wandb]``); None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_names(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """Valid keys at ``path`` (for 'did you mean')."""
    current: type[BaseModel] | None = model
    for part in path:
        field = current.model_fields.get(str(part))
        current = _section_model(field.annotation) if field is not None else None
        if current is None:
            return []
    return list(current.model_fields)


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        source = sources.get(dotted, "default")
        if err["type"] == "extra_forbidden":
            known = _field_names(Config, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            suggestion = f"; did you mean {'.'.join([*loc[:-1], hint[0]])!r}?" if hint else ""
            lines.append(f"unknown config key {dotted!r} (from {source}){suggestion}")
        else:
            shown = err.get("input")
            lines.append(
                f"invalid value for {dotted!r} (from {source}): {err['msg']}; got {shown!r}"
            )
    return ConfigError("\n".join(lines))


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(file: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """A TOML file's tree and each key's source. A top-level ``extends = "base.toml"`` (path
    relative to the file) starts from that file's tree: a baseline config states only how it
    differs from the recipe it varies."""
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    if file.resolve() in chain:
        raise ConfigError(f"config file {str(file)!r} extends itself (through {chain[-1]})")
    try:
        tree = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from exc
    base, sources = {}, {}
    parent = tree.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"config file {str(file)!r}: 'extends' must be a file name")
        base, sources = _read_toml(file.parent / parent, (*chain, file.resolve()))
    sources.update({k: f"file {file}" for k in _flatten(tree)})
    return _merge(base, tree), sources


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the config: TOML ``path`` (or ``$LUFFY_CONFIG``), then env, then CLI overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("LUFFY_CONFIG")
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path:
        tree, sources = _read_toml(Path(path), ())
    for layer in (env_overrides(environ), cli_overrides(overrides)):
        for dotted, (raw, source) in layer.items():
            _set_dotted(tree, dotted, _parse_scalar(raw))
            sources[dotted] = source
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, sources) from None


def iter_fields(model: type[BaseModel] = Config, prefix: str = ""):
    """Yield ``(dotted_name, FieldInfo)`` for every leaf and section of the tree."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        yield dotted, field
        section = _section_model(field.annotation)
        if section is not None:
            yield from iter_fields(section, dotted + ".")


def write_resolved(config: Config, run_dir: Path, role: str) -> Path:
    """Write the resolved config of ``role`` to ``<run_dir>/config.<role>.json`` and return it.
    Atomic, and safe when replicas of a role start together: each writes its own temporary
    file (a shared name let one replica's rename take the file from under the other's)."""
    import tempfile

    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / f"config.{role}.json"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".config.{role}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it owner-only; the run folder's files are readable
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config.to_toml_dict(), indent=2, sort_keys=True))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "cli_overrides",
    "env_overrides",
    "iter_fields",
    "load_config",
    "write_resolved",
]
