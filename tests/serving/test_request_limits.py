"""What a servable does with requests at its limits, and what an export that fails its load
check leaves: checked with plain `tf.saved_model.load` in a process that cannot import the
project (`serving.signature_runner.run_standalone`). The GRPO servables' limits are in
tests/grpo/test_generate_servable.py."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from pipelines import export as export_module
from pipelines.common.errors import run_cli
from serving.export import check_requests
from serving.signature_runner import Refused, run_standalone
from serving.warmup import read_warmup_requests, write_warmup_requests


def _export(argv):
    return run_cli(export_module.main, argv)


def test_the_image_servable_answers_an_empty_batch_with_empty_outputs(tmp_path):
    """Batch normalisation at inference fails on zero images; the servable does not run the
    model then."""
    import keras

    from pipelines.image.export import export_for_serving, serving_metadata
    from pipelines.image.heads import HeadConfig

    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(images))
    logits = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(hidden))
    metadata = serving_metadata(HeadConfig(kind="softmax"), 1.0, (8, 8, 1), list("0123456789"))
    path = export_for_serving(keras.Model(images, logits), tmp_path, "digits", (8, 8, 1),
                              metadata)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    empty, full = run_standalone(path, [("serving_default", {"images": pixels[:0]}),
                                        ("serving_default", {"images": pixels})],
                                 loader="object")
    assert empty["probabilities"].shape == (0, 10) and empty["class_ids"].shape == (0,)
    assert empty["probabilities"].dtype == np.float32 and empty["class_ids"].dtype == np.int64
    assert full["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(full["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


_SAVE_SAC_POLICY = textwrap.dedent("""
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from tf_agents.specs import tensor_spec
    from pipelines.sac import networks
    from pipelines.sac.export import save_policy

    observation_spec = tensor_spec.TensorSpec((5,), tf.float32)
    action_spec = tensor_spec.BoundedTensorSpec((3,), tf.float32, -1.0, 1.0)
    actor = networks.era_actor_network(observation_spec, action_spec, (16,))
    actor.create_variables()
    save_policy(actor, 5, ([-2.0] * 3, [2.0] * 3), sys.argv[1], {"env": "test"})
""")


def test_the_sac_servable_answers_an_empty_batch_with_empty_outputs(tmp_path):
    path = tmp_path / "policy"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": root}
    subprocess.run([sys.executable, "-c", _SAVE_SAC_POLICY, str(path)], check=True, env=env,
                   capture_output=True, timeout=600)
    observations = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    requests = [(signature, {"observation": batch}) for signature in ("serving_default", "sample")
                for batch in (observations[:0], observations)]
    results = run_standalone(path, requests, loader="object")
    for (signature, inputs), outputs in zip(requests, results):
        rows = len(inputs["observation"])
        assert outputs["action"].shape == (rows, 3), signature
        assert outputs["env_action"].shape == (rows, 3), signature
        assert (np.abs(outputs["action"]) <= 1).all()


def _save_needs_positive(path):
    """serving_default: x float32 [batch] -> y = 2x, refusing any x < 1 in the graph (as the
    generate servable refuses a prompt length of 0): zeros are not a valid request."""
    import tensorflow as tf

    from serving.request_checks import after, require

    class NeedsPositive(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            x = after([require(x >= 1, "x must be >= 1", x)], x)
            return {"y": 2 * x}

    module = NeedsPositive()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_an_export_that_fails_its_load_check_leaves_nothing_behind(tmp_path, capsys):
    source = _save_needs_positive(tmp_path / "source")
    base = tmp_path / "exports"
    assert _export(["--path", str(source), "--model-name", "m", "--export-base", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "x must be >= 1; got] [0 0]" in err and "nothing was exported" in err
    assert f"{source} (copied)" in err  # the source named, not the removed staging copy
    assert not base.exists()  # no version, no model directory, no models.config

    # With other models there, they and their models.config entries stay as they were.
    assert _export(["--path", str(source), "--model-name", "other", "--export-base",
                    str(base), "--no-check"]) == 0
    config = (base / "models.config").read_text()
    assert _export(["--path", str(source), "--model-name", "m", "--export-base", str(base)]) == 2
    assert sorted(p.name for p in base.iterdir()) == ["models.config", "other"]
    assert (base / "models.config").read_text() == config and "'m'" not in config


def test_the_load_check_replays_the_servables_warmup_requests(tmp_path, capsys):
    """A SavedModel's assets.extra/tf_serving_warmup_requests (what TF Serving replays when
    it loads a version) replaces zeros in the load check."""
    source = _save_needs_positive(tmp_path / "source")
    assert check_requests(source)[0][1]["x"].tolist() == [0.0, 0.0]
    requests = [("serving_default", {"x": np.array([1.0, 2.5, 4.0], np.float32)}),
                ("serving_default", {"x": np.array([3.0], np.float32)})]
    write_warmup_requests(source, requests)
    read = read_warmup_requests(source)
    assert [(s, {n: v.tolist() for n, v in i.items()}) for s, i in read] == \
        [(s, {n: v.tolist() for n, v in i.items()}) for s, i in requests]
    base = tmp_path / "exports"
    assert _export(["--path", str(source), "--model-name", "m", "--export-base", str(base)]) == 0
    assert "outputs: {'y': (3,)}" in capsys.readouterr().out  # the first warm-up request ran
    assert len(read_warmup_requests(base / "m" / "1")) == 2  # copied with the model


def test_a_refused_request_is_reported_with_its_reason_and_the_rest_still_run(tmp_path):
    source = _save_needs_positive(tmp_path / "source")
    for loader in ("object", "session"):
        bad, good = run_standalone(source, [
            ("serving_default", {"x": np.array([2.0, -3.0], np.float32)}),
            ("serving_default", {"x": np.array([2.0], np.float32)})], loader=loader)
        assert isinstance(bad, Refused) and bad.kind == "InvalidArgumentError", loader
        assert bad.message == "assertion failed: [x must be >= 1; got] [2 -3]", loader
        assert good["y"].tolist() == [4.0]


def test_export_refuses_a_tracking_store_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "typo" / "mlflow.db"
    for argv in (["--run-id", "0" * 32], ["--path", str(tmp_path), "--log-mlflow-model"]):
        code = _export([*argv, "--model-name", "m", "--export-base", str(tmp_path / "e"),
                        "--tracking-uri", f"sqlite:///{missing}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: no MLflow store at {missing}")
        assert not missing.exists() and not missing.parent.exists()
        assert not (tmp_path / "e").exists()


def test_reason_first_in_a_refusal_that_echoes_the_input():
    from serving.client import INPUT_ECHO_CHARS, _shorten

    echoed = "{'images': array(" + "[[0.0, 0.0, 0.0]], " * 300 + ")}"
    reason = "input 'images' must be float32 [-1, 8, 8, 1], got float64 [2, 3]"
    message = _shorten(f"Failed to predict data '{echoed}'. \nError: {reason}")
    assert message.startswith(reason + " (input: {'images': array([[0.0")
    assert len(message) < len(reason) + INPUT_ECHO_CHARS + 60
    assert message.endswith(f"... ({len(echoed)} characters))")
    assert _shorten("plain reason") == "plain reason"
