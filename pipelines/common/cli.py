"""Command lines built from a pipeline's config dataclass: one `--field-name` per field.

Flags the user does not give are left out of the parsed namespace (argparse.SUPPRESS),
so each pipeline layers what was given over its own base: the dataclass defaults, a
preset, or a JSON config file (`pipelines.common.config.layered_values`). Help texts come
from the fields themselves (`pipelines.common.config.option`); `add_run_flags` adds the
flags every pipeline has (`--preset`, `--config-json`, `--print-config`), and
`options_table` writes the docs' table of a config's options.
"""

import argparse
import dataclasses
import json
import typing

from pipelines.common.config import field_default, field_help


def add_config_flags(parser, config_class, help_texts=None, choices=None, default_label="default",
                     defaults=None):
    """Add a flag per field of `config_class`, typed from its annotations.

    bool -> --flag / --no-flag; tuple -> one or more values of the default's element type;
    `X | None` -> X, or the word "none" for None; int -> a whole number, also written as an
    integral float ("1e3", "3000.0", as MLflow's float parameters pass them).
    `defaults` ({field: value}, e.g. a preset's) are the values `--help` shows where the
    command starts from something other than the dataclass defaults.
    """
    help_texts = help_texts or {}
    choices = choices or {}
    defaults = defaults or {}
    # Help from the field itself; `help_texts` only for fields that have none.
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind = hints[field.name]
        optional = type(None) in typing.get_args(kind)
        if optional:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        default = defaults.get(field.name, field_default(field))
        described = field_help(field) or help_texts.get(field.name, "")
        text = f"{described} ({default_label}: {default})".strip()
        options = dict(dest=field.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind is tuple or typing.get_origin(kind) is tuple:
            element = _converter(type(default[0])) if default else str
            parser.add_argument(flag, type=element, nargs="+", metavar="N", **options)
        else:
            parser.add_argument(
                flag,
                type=_none_or(_converter(kind)) if optional else _converter(kind),
                choices=choices.get(field.name),
                **options,
            )
    return parser


def add_run_flags(parser, presets, preset_help="start from a named preset"):
    """`--preset NAME`, `--config-json FILE` and `--print-config`, the same in every pipeline."""
    if presets:
        parser.add_argument("--preset", default=None, choices=sorted(presets),
                            help=f"{preset_help}; --config-json and flags given override it")
    parser.add_argument("--config-json", default=None, metavar="FILE",
                        help="a JSON object of settings; flags given on the command line win")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resulting settings as JSON and exit")
    return parser


def print_config(config):
    print(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=False, default=str))


def options_table(config_class):
    """The docs' Markdown table of a config's options: flag, default, help."""
    rows = ["| flag | default | what it sets |", "|---|---|---|"]
    for field in dataclasses.fields(config_class):
        default = field_default(field)
        flag = "--" + field.name.replace("_", "-")
        text = field_help(field).replace("|", "\\|")
        rows.append(f"| `{flag}` | `{default}` | {text} |")
    return "\n".join(rows)


def given_config_flags(args, config_class):
    """{field: value} for the config flags present in a parsed namespace."""
    return {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if hasattr(args, field.name)
    }


def whole_number(text):
    """An int from "3000", "1e3" or "3000.0"; a ValueError for "2.5" or "abc"."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_integer():
        raise ValueError(f"not a whole number: {text!r}")
    return int(value)


whole_number.__name__ = "int"  # argparse names the type in its error messages


def _converter(kind):
    return whole_number if kind is int else kind


def _none_or(kind):
    def convert(text):
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert
