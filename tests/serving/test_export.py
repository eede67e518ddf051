import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipelines import export as export_module
from pipelines.common.errors import run_cli
from serving.saved_model import signature_specs
from serving.signature_runner import predict_standalone


def _export(argv):
    """`python -m pipelines.export` in this process: its exit status (stderr as users see it)."""
    return run_cli(export_module.main, argv)


def test_export_from_path_loads_without_project_code_and_matches_keras(era_classifier, tmp_path):
    base = tmp_path / "exports"
    assert _export(
        ["--path", str(era_classifier.path.parent), "--model-name", "digits",
         "--export-base", str(base)]
    ) == 0
    version = base / "digits" / "1"
    assert (version / "saved_model.pb").is_file()
    assert version.stat().st_mode & 0o755 == 0o755  # readable by a server run as another user
    assert [p.name for p in (base / "digits").iterdir()] == ["1"]  # no staging left behind
    assert "base_path: '%s'" % (base / "digits") in (base / "models.config").read_text()
    outputs = predict_standalone(version, {"images": era_classifier.images})
    # TF2's object loader (tf.saved_model.load), also without the project, agrees.
    by_object = predict_standalone(version, {"images": era_classifier.images}, loader="object")
    np.testing.assert_allclose(by_object["probabilities"], outputs["probabilities"], atol=1e-7)
    np.testing.assert_allclose(outputs["probabilities"], era_classifier.probabilities, atol=1e-6)
    np.testing.assert_array_equal(
        outputs["class_ids"], era_classifier.probabilities.argmax(axis=-1)
    )
    # ERA's floor is in the served graph: every served distribution has entropy >= 0.6 nats.
    p = outputs["probabilities"]
    assert (-(p * np.log(p)).sum(axis=-1) >= 0.6 - 1e-4).all()


def test_signature_specs_read_from_saved_model(era_classifier):
    inputs, outputs = signature_specs(era_classifier.path)
    assert inputs == {"images": (np.dtype("float32"), (None, 8, 8, 1))}
    assert outputs == {
        "class_ids": (np.dtype("int32"), (None,)),
        "probabilities": (np.dtype("float32"), (None, 10)),
    }


def test_versions_increase_and_existing_version_is_not_overwritten(
    era_classifier, tmp_path, capsys
):
    base = tmp_path / "exports"
    common = ["--path", str(era_classifier.path), "--model-name", "digits",
              "--export-base", str(base), "--no-check"]
    assert _export(common) == 0
    assert _export(common) == 0
    assert sorted(p.name for p in (base / "digits").iterdir()) == ["1", "2"]
    assert _export(common + ["--version", "1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (base / "digits").iterdir()) == ["1", "2"]


def test_clear_errors_for_bad_sources(era_classifier, tmp_path, capsys):
    base = str(tmp_path / "exports")
    assert _export(["--path", str(tmp_path / "nope"), "--model-name", "m",
                            "--export-base", base]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _export(["--path", str(era_classifier.path), "--model-name", "m",
                            "--export-base", base, "--signature-name", "predict"]) == 2
    assert "has no signature 'predict'; it has ['serving_default']" in capsys.readouterr().err
    assert _export(["--path", str(era_classifier.path), "--model-name", "a/b",
                            "--export-base", base]) == 2
    assert "Invalid model name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _export(["--model-name", "m"])  # no source: argparse names the options


def test_export_by_run_id_finds_the_saved_model_artifact(
    era_classifier, tmp_path, tracking_uri, capsys
):
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(era_classifier.path), "export/saved_model")
        mlflow.log_text("not a model", "notes.txt")
    base = tmp_path / "exports"
    assert _export(["--run-id", run.info.run_id, "--model-name", "digits",
                            "--export-base", str(base), "--no-check"]) == 0
    assert signature_specs(base / "digits" / "1") == signature_specs(era_classifier.path)

    with mlflow.start_run() as two:
        mlflow.log_artifacts(str(era_classifier.path), "a")
        mlflow.log_artifacts(str(era_classifier.path), "b")
    assert _export(["--run-id", two.info.run_id, "--model-name", "digits",
                            "--export-base", str(base), "--no-check"]) == 2
    assert "2 SavedModel artifacts (['a', 'b']); pass --artifact-path" in capsys.readouterr().err
    assert _export(["--run-id", two.info.run_id, "--artifact-path", "b",
                            "--model-name", "digits", "--export-base", str(base),
                            "--no-check"]) == 0
    assert _export(["--run-id", "0" * 32, "--model-name", "digits",
                            "--export-base", str(base)]) == 2
    assert "no MLflow run" in capsys.readouterr().err


def test_export_by_run_id_falls_back_to_a_tagged_local_saved_model(
    era_classifier, tmp_path, tracking_uri, capsys
):
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:  # as GRPO records its export: a tag, no artifact
        mlflow.set_tag("export.savedmodel_dir", str(era_classifier.path))
        mlflow.set_tag("note", "not/a/model")
    base = tmp_path / "exports"
    assert _export(["--run-id", run.info.run_id, "--model-name", "lm",
                            "--export-base", str(base), "--no-check"]) == 0
    assert "tag export.savedmodel_dir" in capsys.readouterr().out
    assert (base / "lm" / "1" / "saved_model.pb").is_file()


def test_standalone_reports_a_model_that_cannot_load(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeError, match="did not load and run without the project"):
        predict_standalone(broken, {"x": np.zeros(1)})


def test_a_corrupt_saved_model_is_refused_in_one_line(era_classifier, tmp_path):
    """A damaged saved_model.pb: one `error:` line naming the file, exit 2, no traceback."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(era_classifier.path, broken)
    (broken / "saved_model.pb").write_bytes(b"\x08\x01garbage that is not a SavedModel")
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.export", "--path", str(broken), "--model-name", "m",
         "--export-base", str(tmp_path / "exports")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    # TensorFlow's C++ start-up log lines may precede it; the project prints one line.
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().endswith(lines[0])
    assert lines[0].startswith(f"error: {broken / 'saved_model.pb'} is not a readable SavedModel")
    assert "export the model again" in lines[0]
    assert not (tmp_path / "exports" / "m").exists()
