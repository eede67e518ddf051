import pathlib

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.layout import version_dir, write_models_config


def _make_version(base, name, version):
    path = pathlib.Path(base) / name / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"x")
    return path


def test_first_version_is_one_and_next_is_one_past_highest(tmp_path):
    assert version_dir(tmp_path, "digits") == tmp_path / "digits" / "1"
    _make_version(tmp_path, "digits", 1)
    _make_version(tmp_path, "digits", 7)
    assert version_dir(tmp_path, "digits") == tmp_path / "digits" / "8"


def test_empty_version_dir_left_by_aborted_export_is_free(tmp_path):
    _make_version(tmp_path, "digits", 1)
    (tmp_path / "digits" / "2").mkdir()
    assert version_dir(tmp_path, "digits") == tmp_path / "digits" / "2"
    assert version_dir(tmp_path, "digits", version=2) == tmp_path / "digits" / "2"


def test_refuses_to_overwrite_existing_version(tmp_path):
    _make_version(tmp_path, "digits", 3)
    with pytest.raises(FileExistsError, match="refusing to overwrite.*next free one \\(4\\)"):
        version_dir(tmp_path, "digits", version=3)


@pytest.mark.parametrize("version", [0, -1, "x", 1.5, True])
def test_rejects_non_positive_integer_versions(tmp_path, version):
    with pytest.raises(ValueError, match="positive integers"):
        version_dir(tmp_path, "digits", version=version)


@pytest.mark.parametrize("name", ["", "a/b", "../up", " x"])
def test_rejects_model_names_that_are_not_one_path_part(tmp_path, name):
    with pytest.raises(ValueError, match="Invalid model name"):
        version_dir(tmp_path, name)


def test_models_config_parses_as_tf_serving_config_with_absolute_paths(tmp_path, monkeypatch):
    _make_version(tmp_path, "image", 1)
    _make_version(tmp_path, "sac", 2)
    (tmp_path / "not_a_model").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write_models_config(".")
    assert path == tmp_path / "models.config"
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    entries = config.model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in entries] == [
        ("image", str(tmp_path / "image"), "tensorflow"),
        ("sac", str(tmp_path / "sac"), "tensorflow"),
    ]


def test_models_config_for_chosen_models_and_clear_errors(tmp_path):
    _make_version(tmp_path, "image", 1)
    _make_version(tmp_path, "sac", 1)
    config = write_models_config(tmp_path, ["sac"]).read_text()
    assert "'sac'" in config and "'image'" not in config
    with pytest.raises(ValueError, match=r"No exported versions for model\(s\) \['grpo'\]"):
        write_models_config(tmp_path, ["grpo"])
    with pytest.raises(ValueError, match="No models under"):
        write_models_config(tmp_path / "empty")
