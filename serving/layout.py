"""TF Serving's directory layout: `<export_base>/<model_name>/<version>/` and models.config.

TF Serving watches `<export_base>/<model_name>/` and serves the SavedModel in each numeric
sub-directory as a version of that model (the highest by default). One server can serve
several models when it is started with `--model_config_file=<export_base>/models.config`,
a text proto that names each model and its absolute base path.
"""

import pathlib
import re

MODELS_CONFIG_FILE = "models.config"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_model_name(model_name):
    """A model name is one path component that TF Serving's REST URLs can carry."""
    if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
        raise ValueError(
            f"Invalid model name {model_name!r}: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it becomes a directory and a URL path part)."
        )
    return model_name


def _is_nonempty_dir(path):
    return path.is_dir() and any(path.iterdir())


def version_numbers(model_dir):
    """Sorted versions (ints) of the non-empty numeric sub-directories of `model_dir`."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit() and int(child.name) > 0 and _is_nonempty_dir(child)
    )


def version_dir(export_base, model_name, version=None):
    """The directory one version of a model goes to: `<export_base>/<model_name>/<version>`.

    `version=None` picks the next free version: one past the highest non-empty version
    directory (1 for a new model); an empty directory left by an aborted export counts as
    free. An explicit `version` must be a positive integer whose directory is absent or
    empty: an existing version is never overwritten, because TF Serving may be serving it.
    The directory itself is not created, so an export that fails leaves nothing for TF
    Serving to pick up.
    """
    model_dir = pathlib.Path(export_base).expanduser().resolve() / check_model_name(model_name)
    if version is None:
        existing = version_numbers(model_dir)
        return model_dir / str(existing[-1] + 1 if existing else 1)
    if isinstance(version, bool) or not (
        isinstance(version, int) or (isinstance(version, str) and version.isdigit())
    ) or int(version) < 1:
        raise ValueError(
            f"Invalid version {version!r}: TF Serving versions are positive integers "
            "(or pass version=None for the next free one)."
        )
    path = model_dir / str(int(version))
    if _is_nonempty_dir(path):
        raise FileExistsError(
            f"Version {int(version)} of model {model_name!r} already exists at {path} and "
            "is not empty; refusing to overwrite it. Pass another version, or "
            "version=None for the next free one "
            f"({version_dir(export_base, model_name).name})."
        )
    return path


def model_names_in(export_base):
    """Names of the models under `export_base`: directories holding at least one version."""
    export_base = pathlib.Path(export_base)
    if not export_base.is_dir():
        return []
    return sorted(
        child.name
        for child in export_base.iterdir()
        if child.is_dir() and version_numbers(child)
    )


def models_config_text(export_base, model_names):
    """TF Serving's ModelServerConfig text proto for `model_names` under `export_base`."""
    export_base = pathlib.Path(export_base).expanduser().resolve()
    entries = "".join(
        "  config {\n"
        f"    name: '{name}'\n"
        f"    base_path: '{export_base / name}'\n"
        "    model_platform: 'tensorflow'\n"
        "  }\n"
        for name in model_names
    )
    return "model_config_list {\n" + entries + "}\n"


def write_models_config(export_base, model_names=None):
    """Write `<export_base>/models.config` listing every model (or `model_names`).

    Each model's base_path is absolute, as TF Serving needs when it is started from
    another directory. Start the server with
    `tensorflow_model_server --model_config_file=<export_base>/models.config`.
    Returns the path of the file written.
    """
    export_base = pathlib.Path(export_base).expanduser().resolve()
    available = model_names_in(export_base)
    if model_names is None:
        model_names = available
    else:
        model_names = [check_model_name(name) for name in model_names]
        missing = [name for name in model_names if name not in available]
        if missing:
            raise ValueError(
                f"No exported versions for model(s) {missing} under {export_base}; "
                f"models there: {available or 'none'}."
            )
    if not model_names:
        raise ValueError(
            f"No models under {export_base}: expected <model_name>/<version>/ directories "
            "holding a SavedModel (export one first)."
        )
    path = export_base / MODELS_CONFIG_FILE
    path.write_text(models_config_text(export_base, model_names))
    return path
