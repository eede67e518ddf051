"""One table of the GRPO loop's swappable methods, by kind and name.

As Tunix's `rl/function_registry.py` does for its policy losses and advantage estimators,
each method is a plain function registered under a name: adding one is one function, one
`@register(kind, name, params)` and one test. Three kinds:

- `policy_loss`: the per-token PPO-style surrogate (`policy_losses.py`: vanilla, clip_cov,
  kl_cov), chosen by `--policy-loss`, verl's `policy_loss.loss_mode`;
- `entropy_control`: what else acts on entropy (`entropy_controls.py`: the entropy bonus,
  fixed or adaptive, and training on the top-entropy tokens only);
- `advantage_estimator`: advantages from a group's rewards (`loss.group_advantages`),
  chosen by `--scale-rewards`.

`params` is the method's small config object, a frozen dataclass whose fields are named
as the `GRPOConfig` fields (and so the flags) that set them: `params_from_config` builds it
from a config, `describe` lists every method with its parameters for `--print-config` and
the docs (`methods_table`).
"""

import dataclasses
from typing import NamedTuple

KINDS = ("policy_loss", "entropy_control", "advantage_estimator")
_TABLE = {kind: {} for kind in KINDS}


class Method(NamedTuple):
    kind: str
    name: str
    function: object
    params: type | None  # a dataclass of the method's settings, or None
    summary: str  # the first line of the function's docstring


def register(kind, name, params=None):
    """Decorator: register `function` as the `kind` method `name` with settings `params`."""
    if kind not in _TABLE:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")

    def decorate(function):
        if name in _TABLE[kind]:
            raise ValueError(f"{kind} {name!r} is registered already.")
        summary = (function.__doc__ or "").strip().split("\n")[0]
        _TABLE[kind][name] = Method(kind, name, function, params, summary)
        return function

    return decorate


def _load():
    # The modules whose import registers the methods; imported here so that a lookup
    # always sees the whole table, whichever module the caller imported first.
    from pipelines.grpo import entropy_controls, loss, policy_losses  # noqa: F401


def names(kind):
    _load()
    return tuple(_TABLE[kind])


def get(kind, name):
    """The registered method; an unknown name is a ValueError listing the known ones."""
    _load()
    if name not in _TABLE[kind]:
        raise ValueError(f"{kind} must be one of {tuple(_TABLE[kind])}, got {name!r}.")
    return _TABLE[kind][name]


def param_names(method):
    return [f.name for f in dataclasses.fields(method.params)] if method.params else []


def params_from_config(kind, name, config):
    """The method's settings object, its fields read from the `GRPOConfig` fields of the
    same names."""
    method = get(kind, name)
    if method.params is None:
        return None
    return method.params(**{field: getattr(config, field) for field in param_names(method)})


def describe(config=None):
    """{kind: {name: {parameter: value}}}: every registered method with its parameters
    (their values in `config`, or the settings class's defaults without one)."""
    _load()
    out = {}
    for kind, methods in _TABLE.items():
        out[kind] = {}
        for name, method in methods.items():
            source = config if config is not None else (method.params() if method.params
                                                         else None)
            out[kind][name] = {field: getattr(source, field) for field in param_names(method)}
    return out


def methods_table():
    """Markdown: one row per registered method, its flags and what it does."""
    _load()
    rows = ["| kind | name | flags | what it does |", "|---|---|---|---|"]
    for kind, methods in _TABLE.items():
        for name, method in methods.items():
            flags = ", ".join(f"`--{field.replace('_', '-')}`" for field in param_names(method))
            rows.append(f"| {kind} | `{name}` | {flags or '-'} | {method.summary} |")
    return "\n".join(rows)
