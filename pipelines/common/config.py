"""One way to check and load a pipeline's settings.

Every pipeline's config is a dataclass whose fields carry their own help, as TRL's
`GRPOConfig` does: `lr: float = option(3e-4, "learning rate")`. The command line, its
`--help`, `--print-config` and the docs' option tables all come from those fields
(`pipelines.common.cli`). Its checks collect every problem in a `Problems` and raise them
together as one `ConfigError`, so a user fixes a command line in one go.
`load_config_json` reads `--config-json FILE` with errors that name the file and the field.
Presets (named starting points, `--preset NAME`) are plain dicts of field values, layered
under `--config-json` and the flags by `layered_values`; `make_config` builds the config
from them, reporting wrong types and failed checks together.
"""

import dataclasses
import json
import pathlib
import types
import typing

from pipelines.common.errors import ConfigError, UserError


def option(default=dataclasses.MISSING, help="", default_factory=dataclasses.MISSING):
    """A config field with its help text (shown by `--help` and in the docs' tables)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help})


def field_help(field):
    return field.metadata.get("help", "")


def field_default(field):
    """A dataclass field's default value (its factory's product), or MISSING."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def layered_values(config_class, presets=None, preset=None, config_json=None, flags=None):
    """{field: value} of a config: the preset (if any), then a JSON file, then the flags.

    An unknown preset is a UserError listing the known ones. The result remembers which
    fields came from the JSON file (`.origins`), so `make_config` names the file in their
    problems.
    """
    values = LayeredValues()
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise UserError(f"unknown preset {preset!r}; known presets: "
                            f"{', '.join(sorted(presets)) or 'none'}")
        values.update(renamed_values(config_class, presets[preset], f"preset {preset}"))
    if config_json:
        from_file = renamed_values(
            config_class, load_config_json(config_json, config_class, check_types=False),
            f"config file {config_json}")
        values.update(from_file)
        values.origins.update(dict.fromkeys(from_file, f"config file {config_json}"))
    for name in flags or {}:
        values.origins.pop(name, None)
    values.update(flags or {})
    return values


class LayeredValues(dict):
    """Field values, with `origins` {field: where it came from} for those not from flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.origins = {}


class Problems:
    """Collects what is wrong with a config; `raise_if_any` reports all of it at once."""

    def __init__(self, what):
        self.what = what
        self.messages = []

    def add(self, message):
        self.messages.append(message)

    def check(self, ok, message):
        if not ok:
            self.add(message)
        return ok

    def choice(self, name, value, allowed):
        return self.check(value in allowed, f"{name}={value!r} is not one of {tuple(allowed)}")

    def at_least(self, name, value, lowest):
        return self.check(value >= lowest, f"{name} must be >= {lowest} (got {value})")

    def in_range(self, name, value, low, high, low_open=False, high_open=False):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return self.check(above and below, f"{name} must be in {interval} (got {value})")

    def raise_if_any(self):
        if self.messages:
            raise ConfigError(self.what, self.messages)


def _field_types(config_class):
    return typing.get_type_hints(config_class)


def _matches(value, kind):
    """Whether a JSON value fits a dataclass annotation (int fits float, lists fit tuples)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is typing.Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is tuple or origin is tuple or kind is list or origin is list:
        return isinstance(value, (list, tuple))
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True


def type_problems(config_class, values):
    """{field: problem} for every unknown field and every value of the wrong type."""
    kinds = _field_types(config_class)
    problems = {}
    for name in sorted(values):
        if name not in kinds:
            problems[name] = f"unknown field {name!r} (known: {', '.join(sorted(kinds))})"
        elif not _matches(values[name], kinds[name]):
            problems[name] = f"{name} must be {_describe(kinds[name])}, got {values[name]!r}"
    return problems


def check_field_types(config_class, values, source):
    """Raise a ConfigError naming every unknown field and every value of the wrong type."""
    problems = type_problems(config_class, values)
    if problems:
        raise ConfigError(source, list(problems.values()))


def make_config(config_class, values):
    """`config_class(**values)`, with every problem reported at once.

    The wrong types and unknown fields together with what the config's own checks find in
    the rest (a field of the wrong type is checked at its default meanwhile).
    """
    origins = getattr(values, "origins", {})
    values = renamed_values(config_class, values)
    bad = {name: (f"{origins[name]}: {problem}" if name in origins else problem)
           for name, problem in type_problems(config_class, values).items()}
    good = {name: value for name, value in values.items() if name not in bad}
    try:
        config = config_class(**good)
    except ConfigError as error:
        raise ConfigError(error.what, list(bad.values()) + error.problems) from None
    if bad:
        raise ConfigError(f"{config_class.__name__} settings", list(bad.values()))
    return config


def renamed_values(config_class, values, source="settings"):
    """`values` with the fields a config renamed (`config_class.RENAMED_FIELDS`,
    {old: new}) under their new names; one source giving both is a UserError."""
    renamed = getattr(config_class, "RENAMED_FIELDS", {})
    values = dict(values)
    for old, new in renamed.items():
        if old in values:
            if new in values:
                raise UserError(f"{source}: {old} was renamed {new}; give only {new} (got "
                                f"both: {values[old]!r} and {values[new]!r})")
            values[new] = values.pop(old)
    return values


def _describe(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if kind is tuple or typing.get_origin(kind) is tuple:
        return "a list"
    return getattr(kind, "__name__", str(kind))


def load_config_json(path, config_class, check_types=True):
    """{field: value} from a JSON file of `config_class` fields, checked field by field
    (`check_types=False`: only that it is a JSON object; `make_config` checks the rest)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"config file {path} is not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno})"
        ) from None
    if not isinstance(values, dict):
        raise UserError(
            f"config file {path} must hold a JSON object of {config_class.__name__} fields, "
            f"got {type(values).__name__}"
        )
    if check_types:
        check_field_types(config_class, values, f"config file {path}")
    return values


def config_fields(config_class):
    return [field.name for field in dataclasses.fields(config_class)]
