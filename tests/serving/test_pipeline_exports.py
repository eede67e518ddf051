"""Each pipeline's servable, through `python -m pipelines.export`, predicts what the
pipeline's own model computes: run as TF Serving runs it (MetaGraphDef + session), in a
process that cannot import era_keras, Keras, keras-hub, TF-Agents or this repository."""

import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest

from pipelines import export as export_cli
from serving.saved_model import signature_specs
from serving.signature_runner import InputSpecError, SignatureRunner, predict_standalone


def _run_module(module, *args, env=None, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True,
        env=env or os.environ.copy(), cwd=cwd, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _only_run_id(tracking_uri, experiment):
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0].info.run_id


def test_grpo_scoring_export_matches_keras_hub_model(tmp_path):
    import keras

    from pipelines.grpo.export import export_scoring_savedmodel, scoring_function
    from pipelines.grpo.models import tiny_causal_lm

    causal_lm = tiny_causal_lm("qwen", num_layers=1, hidden_dim=32, num_heads=2)
    written = export_scoring_savedmodel(causal_lm, tmp_path / "pipeline", "lm")
    base = tmp_path / "exports"
    assert export_cli.main(["--path", str(written), "--model-name", "grpo_policy",
                            "--export-base", str(base), "--no-check"]) == 0
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, causal_lm.backbone.vocabulary_size, (3, 12)).astype(np.int32)
    padding_mask = np.ones_like(token_ids)
    padding_mask[1, 8:] = 0
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}

    # The servable states its full input spec (batch and time vary by design) and refuses
    # a request of another rank or dtype, naming it.
    specs, _ = signature_specs(base / "grpo_policy" / "1")
    assert specs == {"token_ids": (np.dtype("int32"), (None, None)),
                     "padding_mask": (np.dtype("int32"), (None, None))}
    with pytest.raises(InputSpecError, match=r"input 'token_ids' must be int32 \[-1, -1\]"):
        SignatureRunner(base / "grpo_policy" / "1")(
            {"token_ids": token_ids[..., None], "padding_mask": padding_mask})
    served = predict_standalone(base / "grpo_policy" / "1", inputs)
    expected = scoring_function(causal_lm)(token_ids, padding_mask)
    for name in ("token_log_probs", "sequence_log_prob"):
        np.testing.assert_allclose(
            served[name], keras.ops.convert_to_numpy(expected[name]), rtol=1e-5, atol=1e-5
        )
    assert (served["token_log_probs"][1, 8:] == 0).all()


@pytest.mark.slow
def test_image_pipeline_run_exports_what_keras_predicts(tmp_path, tracking_uri):
    import keras

    from pipelines.image import data
    from pipelines.image.training import MODEL_FILE

    run_dir = tmp_path / "run"
    _run_module(
        "pipelines.image", "--dataset", "sklearn_digits", "--data-dir", str(tmp_path / "tfds"),
        "--backbone", "resnet8", "--width", "4", "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "32", "--run-dir", str(run_dir), "--no-log-model", "--verbose", "0",
    )
    run_id = _only_run_id(tracking_uri, "image")
    base = tmp_path / "exports"
    assert export_cli.main(["--run-id", run_id, "--model-name", "digits",
                            "--export-base", str(base)]) == 0
    export_dir = base / "digits" / "1"
    (dtype, shape), = signature_specs(export_dir)[0].values()
    images = np.random.default_rng(0).integers(0, 256, (6, *shape[1:]), dtype=dtype)
    served = predict_standalone(export_dir, {"images": images})

    model = keras.saving.load_model(run_dir / MODEL_FILE)
    # Without --calibrate the export serves the trained model's softmax as it is (T = 1).
    metadata = mlflow.artifacts.load_dict(f"runs:/{run_id}/serving_metadata.json")
    assert metadata["calibrated"] is False
    temperature = metadata["temperature"]
    assert temperature == 1.0
    logits = keras.ops.convert_to_numpy(model(data.pixels_to_float(images), training=False))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature))
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["class_ids"], expected.argmax(axis=-1))


_SAC_GREEDY_ACTIONS = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from tf_agents.policies import greedy_policy
    from tf_agents.trajectories import time_step as ts
    from pipelines.sac.config import SacConfig
    from pipelines.sac.train import SacRun

    run_dir, observations_file, actions_file = sys.argv[1:]
    config = SacConfig(**json.load(open(os.path.join(run_dir, "config.json"))))
    run = SacRun(config)
    run.restore()  # the final checkpoint from run_dir
    observations = np.load(observations_file)
    step = ts.restart(tf.constant(observations), batch_size=len(observations))
    policy = greedy_policy.GreedyPolicy(run.agent.policy)
    np.save(actions_file, policy.action(step).action.numpy())
""")


@pytest.mark.slow
def test_sac_policy_export_matches_the_trained_policy(tmp_path, tracking_uri):
    run_dir = tmp_path / "run"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    _run_module(
        "pipelines.sac", "--total-env-steps", "200", "--warmup-steps", "100",
        "--batch-size", "32", "--hidden-sizes", "16", "16", "--eval-every", "200",
        "--eval-episodes", "1", "--log-every", "100", "--checkpoint-every", "200",
        "--run-dir", str(run_dir), env=env, cwd=tmp_path,
    )
    run_id = _only_run_id(tracking_uri, "sac")
    base = tmp_path / "exports"
    # The policy's serving_default: observation [batch, obs_dim] -> action (deterministic).
    assert export_cli.main(["--run-id", run_id, "--model-name", "policy",
                            "--export-base", str(base), "--log-mlflow-model"]) == 0
    export_dir = base / "policy" / "1"
    inputs_spec, _ = signature_specs(export_dir)
    assert list(inputs_spec) == ["observation"] and inputs_spec["observation"][1] == (None, 3)
    assert (export_dir / "assets.extra" / "action_space.json").is_file()

    observations = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    inputs = {"observation": observations}
    served = predict_standalone(export_dir, inputs)
    np.save(tmp_path / "observations.npy", observations)
    subprocess.run(
        [sys.executable, "-c", _SAC_GREEDY_ACTIONS, str(run_dir),
         str(tmp_path / "observations.npy"), str(tmp_path / "actions.npy")],
        check=True, env=env, capture_output=True, timeout=600,
    )
    np.testing.assert_allclose(served["action"], np.load(tmp_path / "actions.npy"), atol=1e-6)

    # The MLflow model that `mlflow models serve` would serve gives the same actions.
    sac_experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name("sac")
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[sac_experiment.experiment_id], output_format="list")
    servable = mlflow.pyfunc.load_model(logged.model_uri)
    np.testing.assert_allclose(servable.predict(inputs)["action"], served["action"], atol=1e-6)
