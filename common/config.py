"""Typed configs from YAML plus dotted command-line overrides.

Defaults live in the dataclasses (one line and one comment per key) and in the
YAML files under configs/, which mirror them and ship inside the package
(avcache/configs/ once installed): `--config NAME` reads the shipped NAME.yaml.
Unknown keys are refused with a suggestion, values are checked against the field
types, and the resolved config is a plain dict that is saved beside every output
and hashed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avcache.common.atomic import write_text_atomic
from avcache.common.untrusted import printable, read_bounded

T = TypeVar("T")

# Field metadata of a key whose value names a program to run or a file to read (ffmpeg, a
# weights file). Such a value is the user's own: their command line, their config file or
# the installation's default. A config recorded in a file that travels with a cache or a
# run folder never supplies one (see local_values).
LOCAL = {"names_a_file": True}
# Field metadata of a key added after caches and runs were made with its section: while it
# holds its default it is left out of the resolved config, so those keep their config hash
# (and their saved config its bytes); any other value is written and hashed as usual.
SINCE_ADDED = {"omitted_at_default": True}


def omitted_where(unused: Callable[[Any], bool]) -> dict[str, Any]:
    """Field metadata of a key added after caches were made with its section, whose default
    does what those caches did not: it is left out of the resolved config where
    `unused(section)` holds (its value then changes nothing those caches hold: the behaviour
    they had, or a part that is off), so they keep their hash and saved config's bytes. A
    reader of a recorded config takes its absence for that former behaviour."""
    return {"omitted_where": unused}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class MissingKeysError(ConfigError):
    """An entry without the keys that have no default (a split without its labels)."""

    def __init__(self, where: str, key: str, missing: list[str], needed: list[str]) -> None:
        super().__init__(f"{_at(where, key)}: {', '.join(missing)} must be given")
        self.key, self.needed = key, needed  # needed: every key without a default


# A config is a page of keys: a file larger than this is not one (a run's config.yaml is ~2 KB).
MAX_CONFIG_BYTES = 1 << 20


class AliasError(yaml.YAMLError):
    """A YAML alias (`*name`) in a config: refused, not expanded."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__()
        self.mark = mark

    def __str__(self) -> str:
        return (f"line {self.mark.line + 1}: a YAML alias (*name) repeats another value; "
                "avcache configs take none (a few KB of nested aliases expand to billions of "
                "values when a config is checked): write the value out")  # fmt: skip


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing every alias: safe_load builds `*name` as a shared
    reference, so nothing is expanded while loading, but checking the config (or printing a
    refused value) walks each reference, and 9 levels of 9 aliases are 387 million values."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise AliasError(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """One YAML document as plain data (yaml.safe_load), aliases refused (AliasError)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: no Python objects built


# The shipped configs: configs/ beside common/ in a clone (and an editable install), mapped
# to avcache/configs/ beside avcache/common/ in a wheel (setup.cfg's package_dir).
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs() -> list[str]:
    """The names `--config` takes for the configs that ship with the package."""
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml"))


def config_path(path: Path | str) -> Path:
    """The file `--config` names: a regular file as given, else the shipped config of that
    name (`--config train_baseline`), so that a pip user, who has no configs/ folder, can
    start from one. Neither: refused with the names there are."""
    path = Path(path)
    try:
        if path.is_file():
            return path
        if path.name == str(path) and path.name in shipped_configs():
            return SHIPPED_CONFIGS / f"{path.name}.yaml"
        if path.exists():
            return path  # a folder or a device: the reader refuses it by name
    except OSError:
        return path  # a folder on the way that cannot be read: so does the reader, by name
    raise ConfigError(
        f"{path}: no such config file; give a YAML file, the name of a shipped config "
        f"({', '.join(shipped_configs())}), or none for the built-in defaults "
        "(`--print-config > my.yaml` writes them to a file to edit)"
    )


def load_config(cls: type[T], path: Path | str | None, overrides: list[str] = (),
                root: Path | None = None) -> T:  # fmt: skip
    """Defaults of `cls`, updated by the YAML file at `path` (or the shipped config of that
    name), then by `key.sub=value` overrides. An override of a key inside an entry that the
    file or the defaults hold (splits.test.videos) updates that entry; a new entry of a
    mapping (a split of its own) is given whole. A mistake is named where it was made: in
    the file, or in the override that made it. `root`: the folder the file must lie in once
    its links are followed (a run folder's); no shipped name is looked up under one."""
    data: dict[str, Any] = {}
    where = str(path or "config")
    if path is not None:
        path = Path(path) if root is not None else config_path(path)
        where, data = str(path), _read_yaml(path, root)
        from_dict(cls, data, where)
    if overrides:
        data = with_defaults(cls, data)
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(data, key, value)
        try:
            from_dict(cls, data, where=f"override {override}")  # what was before it was sound
        except MissingKeysError as error:
            whole = ", ".join(f"{name}: ..." for name in error.needed)
            raise ConfigError(f"{error}; an entry that the config does not hold yet is given "
                              f"whole: {error.key}={{{whole}}}") from None  # fmt: skip
    return from_dict(cls, data, where)


def _read_yaml(path: Path, root: Path | None = None) -> dict[str, Any]:
    """A config file: a regular file of at most MAX_CONFIG_BYTES (inside `root` if given),
    one YAML mapping without aliases or nesting too deep to parse (run folders travel:
    theirs may be hostile)."""
    try:
        raw = read_bounded(path, "config", MAX_CONFIG_BYTES, root, error=ConfigError)
        data = safe_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from error
    except AliasError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    except RecursionError:
        raise ConfigError(f"{path}: nests too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`faces.frames=4` -> ("faces.frames", 4); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        return key.strip(), safe_yaml(raw)
    except AliasError as error:
        raise ConfigError(f"override {text!r}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from error


def with_defaults(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a checked file's mapping) with each key it leaves out holding its default, in
    every section: an override then updates the entry it names (the defaults' splits.test)
    instead of starting one that lacks the rest of its keys. A mapping the file gives (its
    own splits) is kept whole: the file says which entries there are."""
    hints = typing.get_type_hints(cls)
    full = dict(data)
    for field in dataclasses.fields(cls):
        given, hint = data.get(field.name), hints[field.name]
        if field.name not in data and _has_default(field):
            full[field.name] = to_dict(_default(field))
        elif dataclasses.is_dataclass(hint) and isinstance(given, dict):
            full[field.name] = with_defaults(hint, given)
    return full


def _has_default(field: dataclasses.Field) -> bool:
    return (field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING)  # fmt: skip


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
    node[leaf] = value


def from_dict(cls: type[T], data: Any, where: str, key: str = "") -> T:
    """Build dataclass `cls` from nested dicts, refusing unknown keys and wrong types; errors
    say `where` (a file, an override) and the dotted `key` inside it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where, key)}: expected a mapping, got {data!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [name for name in data if name not in fields]
    if unknown:
        raise ConfigError(_unknown_key_message(_at(where, key), unknown[0], list(fields)))
    values = {name: _coerce(hints[name], value, where, _dotted(key, name))
              for name, value in data.items()}  # fmt: skip
    needed = [field.name for field in fields.values() if not _has_default(field)]
    missing = [name for name in needed if name not in values]
    if missing:
        raise MissingKeysError(where, key, missing, needed)
    return cls(**values)


def _at(where: str, key: str) -> str:
    return f"{where}: {key}" if key else where


def _dotted(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def _unknown_key_message(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown key {key!r}{hint} (known: {', '.join(known)})"


def _coerce(hint: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, key)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where, key)}: expected a mapping, got {value!r}")
        return {str(k): _coerce(value_type, v, where, _dotted(key, k)) for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        items = value if isinstance(value, list) else [value]
        return [_coerce(item_type, item, where, f"{key}[{i}]") for i, item in enumerate(items)]
    if origin in (typing.Union, types.UnionType):
        return _coerce_optional(hint, value, where, key)
    return _coerce_scalar(hint, value, where, key)


def _coerce_optional(hint: Any, value: Any, where: str, key: str) -> Any:
    """A union: None where it allows None, else the first of its types that takes the value
    (`int | str` takes 2 as 2 and "auto" as "auto")."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    for choice in inner[:-1]:
        try:
            return _coerce(choice, value, where, key)
        except ConfigError:
            continue
    return _coerce(inner[-1], value, where, key)


def _coerce_scalar(hint: type, value: Any, where: str, key: str) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(value, where, key)
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{_at(where, key)}: expected {hint.__name__}, got {value!r}")


def _finite(value: int | float, where: str, key: str) -> float:
    """A float key's number; none means .inf or .nan (a comparison with NaN is always false,
    so every range check would let it through to the workers)."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{_at(where, key)}: expected a finite number, got {value!r}")
    return number


def local_keys(cls: type) -> list[str]:
    """The dotted keys of `cls` (and of its sections) marked LOCAL."""
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        if field.metadata.get("names_a_file"):
            keys.append(field.name)
        elif dataclasses.is_dataclass(hints[field.name]):
            keys += [f"{field.name}.{key}" for key in local_keys(hints[field.name])]
    return keys


def local_values(config: T, where: str, given: dict[str, Any], fix: str) -> T:
    """A copy of `config`, recorded in `where` (a file that travels between people), in which
    every LOCAL key holds the user's own value: `given[key]` where the caller has one (the
    command line's, or None where the run needs no such file), else the default (the
    installation's own: ffmpeg `auto`). A recorded value other than the default is refused
    rather than run or read, with `fix` saying how to give one: whoever can write a cache
    or a run folder could otherwise name any program on the disk."""
    config = copy.deepcopy(config)
    defaults = type(config)()
    for key in local_keys(type(config)):
        *sections, name = key.split(".")
        node, default = config, defaults
        for section in sections:
            node, default = getattr(node, section), getattr(default, section)
        if key in given:
            setattr(node, name, given[key])
        elif getattr(node, name) != getattr(default, name):
            raise ConfigError(
                f"{where}: {key}={printable(repr(getattr(node, name)))} names a program or file "
                f"to use; avcache runs and reads none that a cache or run folder names: {fix}"
            )
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (for YAML/JSON and hashing); SINCE_ADDED keys at
    their defaults and omitted_where keys where unused are left out."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {field.name: to_dict(getattr(config, field.name))
                for field in dataclasses.fields(config)
                if not _omitted(field, config)}  # fmt: skip
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return type(config)(to_dict(value) for value in config)
    return copy.deepcopy(config)


def _omitted(field: dataclasses.Field, section: Any) -> bool:
    if "omitted_where" in field.metadata:
        return field.metadata["omitted_where"](section)
    if not field.metadata.get("omitted_at_default"):
        return False
    return _has_default(field) and getattr(section, field.name) == _default(field)


def config_hash(config: Any) -> str:
    """A short stable hash of the resolved config: equal configs, equal hashes."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_yaml(config: Any, path: Path) -> None:
    write_text_atomic(path, yaml_text(config))


def yaml_text(config: Any) -> str:
    """The resolved config as YAML (what --print-config shows and runs save)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def key_listing(cls: type, width: int = 96) -> str:
    """Every key of `cls` with its default, one section per paragraph (for --help)."""
    sections = []
    for section, values in to_dict(cls()).items():
        pairs = [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                 for key, value in _flat(values, section)]  # fmt: skip
        sections.append(textwrap.fill(" ".join(pairs), width, subsequent_indent="  "))
    return "\n".join(sections)


def _flat(value: Any, key: str) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        return [(key, value)]
    return [pair for name, inner in value.items() for pair in _flat(inner, f"{key}.{name}")]
