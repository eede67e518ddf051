"""The layer snippets of README.md and docs/layers.md run as written."""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Each document shows one snippet per layer: softmax, Gaussian, logit ERA, in that order.
DOCUMENTS = ["README.md", "docs/layers.md"]


def layer_snippets(document):
    text = (ROOT / document).read_text()
    if "<!-- section: layers -->" in text:
        text = text.split("<!-- section: layers -->")[1].split("<!-- /section: layers -->")[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_softmax_and_gaussian_snippets_run(document):
    softmax_snippet, gaussian_snippet, logit_snippet = layer_snippets(document)
    scope = {}
    exec(softmax_snippet, scope)
    assert scope["model"].predict(np.zeros((2, 28, 28, 1)), verbose=0).shape == (2, 10)
    exec(gaussian_snippet, scope)
    assert tuple(scope["sigma"].shape) == (None, 6)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_logit_snippet_runs_on_real_tensors(document):
    import keras

    *_, logit_snippet = layer_snippets(document)
    rng = np.random.default_rng(0)
    scope = {
        "keras": keras,
        "era_keras": __import__("era_keras"),
        "logits": rng.standard_normal((2, 5, 11)).astype("float32"),
        "tokens": rng.integers(0, 11, (2, 5)),
        "advantages": np.array([0.5, -0.5], "float32"),
        "mask": np.ones((2, 5), "float32"),
        "old_log_probs": np.full((2, 5), -2.4, "float32"),
    }
    exec(logit_snippet, scope)
    assert np.isfinite(float(keras.ops.convert_to_numpy(scope["loss"])))
