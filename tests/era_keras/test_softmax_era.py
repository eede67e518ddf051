"""Softmax ERA: the entropy floor, the exact inverse, argmax, errors, save/load, compile.

The floor is a mathematical claim, so it is checked on random and adversarial inputs:
tiny and huge logits (up to 1e4), near one-hot rows, D = 2, 10 and 1000, both floors,
float32 / float16 / bfloat16 (and float64 where the backend has it).

Tolerance: the map runs in float32 for every input dtype below float64, so in float32 the
output's entropy meets the floor up to the round-off of z' (|z'| <= ~90, relative error
~1e-7), which we bound by 2e-6 nats. A float16/bfloat16 *output* is z' rounded once to that
dtype: the test bounds that rounding by the dtype's unit roundoff and its effect on the
entropy to first order (see test_low_precision_output_...). Under mixed precision,
keep the layer in float32 (as Keras advises for the final softmax) and the float32
tolerance applies.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import era_keras
from tests.era_keras import reference
from tests.era_keras.backend_utils import BACKEND, supports_float64, to_numpy, value_and_grad

FLOAT32_TOL = 2e-6


def era_numpy(logits, target, floor="tight", inverse="exact", dtype="float32"):
    out = era_keras.softmax_era(
        ops.convert_to_tensor(np.asarray(logits), dtype=dtype),
        target_entropy=target,
        floor=floor,
        inverse=inverse,
    )
    return to_numpy(ops.cast(out, "float32")).astype(np.float64)


def adversarial_logits(rng, batch, num_classes):
    """Random rows at many scales, plus the rows where the floor is tightest."""
    scales = rng.choice([1e-3, 1.0, 10.0, 100.0, 1e4], size=(batch, 1))
    logits = rng.standard_normal((batch, num_classes)) * scales
    logits[0] = 0.0  # uniform
    logits[1] = 0.0
    logits[1, 0] = 1e4  # one-hot
    logits[2] = -1e4
    logits[2, -1] = 1e4  # extreme spread
    logits[3] = 0.0
    logits[3, 1] = 30.0  # near one-hot, p_top = 1 - (D-1) e^-30
    return logits.astype(np.float32)


def sampled_target(fraction, num_classes, floor):
    low, high = era_keras.admissible_range(num_classes, floor)
    low = max(low, 0.0)
    return low + (high - low) * fraction


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.sampled_from([2, 3, 10, 1000]),
    fraction=st.floats(0.01, 0.99),
    floor=st.sampled_from(["tight", "paper"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entropy_floor_holds_on_random_and_adversarial_inputs(
    num_classes, fraction, floor, seed
):
    target = sampled_target(fraction, num_classes, floor)
    logits = adversarial_logits(np.random.default_rng(seed), 64, num_classes)
    z = era_numpy(logits, target, floor)
    assert np.all(np.isfinite(z))
    assert reference.entropy(z).min() >= target - FLOAT32_TOL


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
@pytest.mark.parametrize("target", [0.05, 0.3, 0.6])
def test_tight_floor_is_met_exactly_at_a_one_hot_input(num_classes, target):
    logits = np.zeros((num_classes, num_classes), np.float32)
    logits[np.arange(num_classes), np.arange(num_classes)] = 1e4
    entropies = reference.entropy(era_numpy(logits, target, "tight"))
    np.testing.assert_allclose(entropies, target, atol=FLOAT32_TOL)
    setting = era_keras.entropy_floor(num_classes, target, floor="tight")
    assert setting.min_entropy == pytest.approx(target, abs=1e-12)


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_tight_floor_minimum_is_at_a_vertex_under_adversarial_search(num_classes):
    """Minimise the output entropy over inputs with L-BFGS from many starts."""
    from scipy.optimize import minimize

    target = 0.4 if num_classes == 2 else 0.8
    setting = era_keras.entropy_floor(num_classes, target, floor="tight")
    rng = np.random.default_rng(num_classes)
    best = math.inf
    for _ in range(30):
        result = minimize(
            lambda x: reference.entropy(reference.softmax_era(x, setting.constant)),
            rng.standard_normal(num_classes) * 3.0,
            method="L-BFGS-B",
        )
        best = min(best, result.fun)
        assert result.fun >= target - 1e-9
    # The search drives the logits towards a one-hot input and ends at the floor.
    assert best == pytest.approx(target, abs=1e-3)


def test_paper_floor_numbers_match_the_measured_reference():
    """Numbers from the issue's independent run (D = 10 and 1000, C = exp(H0 - 1))."""
    measured = {0.3: (0.51, 0.907), 0.6: (0.97, 0.792), 1.0: (1.54, 0.606)}
    for target, (min_entropy, cap) in measured.items():
        setting = era_keras.entropy_floor(10, target, floor="paper")
        assert setting.min_entropy == pytest.approx(min_entropy, abs=0.005)
        assert setting.max_probability == pytest.approx(cap, abs=0.0005)
    assert era_keras.entropy_floor(1000, 0.6, floor="paper").min_entropy == pytest.approx(
        1.12, abs=0.005
    )


@pytest.mark.parametrize("floor", ["tight", "paper"])
def test_entropy_floor_report_matches_what_the_layer_produces(floor):
    setting = era_keras.entropy_floor(10, 0.6, floor=floor)
    logits = np.full((1, 10), -1e4, np.float32)
    logits[0, 3] = 1e4
    z = era_numpy(logits, 0.6, floor)
    probabilities = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert reference.entropy(z)[0] == pytest.approx(setting.min_entropy, abs=1e-5)
    assert probabilities.max() == pytest.approx(setting.max_probability, abs=1e-6)


@pytest.mark.parametrize("floor", ["tight", "paper"])
def test_exact_inverse_matches_scipy_lambertw(floor):
    setting = era_keras.entropy_floor(1000, 0.6, floor=floor)
    logits = adversarial_logits(np.random.default_rng(0), 32, 1000)
    expected = reference.softmax_era(logits.astype(np.float64), setting.constant)
    z = era_numpy(logits, 0.6, floor)
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=0)
    approx = era_numpy(logits, 0.6, floor, inverse="approx")
    # The authors' closed form is off by up to ~0.35 in logit space; ours is not.
    assert np.abs(approx - expected).max() > 1e-2


@pytest.mark.skipif(not supports_float64(), reason="float64 needs JAX x64 mode")
def test_exact_inverse_float64_is_float64_precise():
    setting = era_keras.entropy_floor(10, 0.6)
    logits = adversarial_logits(np.random.default_rng(1), 32, 10).astype(np.float64)
    z = to_numpy(era_keras.softmax_era(ops.convert_to_tensor(logits, "float64"), 0.6))
    assert z.dtype == np.float64
    np.testing.assert_allclose(
        z, reference.softmax_era(logits, setting.constant), rtol=1e-13, atol=0
    )


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_argmax_is_preserved(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = (rng.standard_normal((256, num_classes)) * 5).astype(np.float32)
    top = logits.argmax(-1)
    logits[np.arange(256), top] += 0.01  # keep the winner's margin above float32 ties
    for floor in ("tight", "paper"):
        z = era_numpy(logits, 0.3, floor)
        np.testing.assert_array_equal(z.argmax(-1), top)


@pytest.mark.parametrize("floor", ["tight", "paper"])
def test_gradient_is_finite_and_matches_finite_differences(floor):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((8, 10)) * 3).astype(np.float32)
    weights = rng.standard_normal((8, 10))
    setting = era_keras.entropy_floor(10, 0.6, floor=floor)

    def objective(x):
        return ops.sum(
            era_keras.softmax_era(x, 0.6, floor=floor) * ops.convert_to_tensor(weights, x.dtype),
            axis=-1,
        )

    _, grad = value_and_grad(objective, logits)
    assert np.all(np.isfinite(grad))

    def reference_objective(x):
        return (reference.softmax_era(x, setting.constant) * weights).sum(-1)

    eps = 1e-5
    numeric = np.zeros_like(grad, dtype=np.float64)
    base = logits.astype(np.float64)
    for j in range(10):
        step = np.zeros_like(base)
        step[:, j] = eps
        numeric[:, j] = (reference_objective(base + step) - reference_objective(base - step)) / (
            2 * eps
        )
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-4)


def test_gradient_stays_finite_at_huge_and_one_hot_logits():
    logits = adversarial_logits(np.random.default_rng(2), 16, 1000)
    _, grad = value_and_grad(lambda x: era_keras.softmax_era(x, 0.6), logits)
    assert np.all(np.isfinite(grad))


# Unit roundoff of each output dtype: rounding to nearest moves x by at most u * |x|.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_low_precision_output_is_the_reference_rounded_once_and_keeps_the_floor(
    dtype, num_classes
):
    """float16 / bfloat16 logits in, the same dtype out, the floor kept up to that rounding.

    The map runs in float32, so its output should be the float64 reference z' (scipy's
    lambertw on the rounded inputs) rounded once to `dtype`: |z'_out - z'| <= (u + 2e-6) |z'|
    per logit, u the dtype's unit roundoff and 2e-6 the float32 map's relative error
    (z' <= -1 is never subnormal). Both bounds below come from u and the reference, not from
    the output. To first order such an error moves the entropy by at most
    sum_i p_i |log p_i + H| (u + 2e-6) |z'_i|, with p and H of the reference; we allow twice
    that for the second-order terms, plus the float32 tolerance.
    """
    target = 0.3
    logits = adversarial_logits(np.random.default_rng(3), 64, num_classes)
    logits = np.clip(logits, -6e4, 6e4)  # float16's range
    low = ops.convert_to_tensor(logits, dtype=dtype)
    out = era_keras.softmax_era(low, target)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    inputs = to_numpy(ops.cast(low, "float32")).astype(np.float64)
    # On the rounded inputs, the float32 map meets the floor as in float32.
    assert reference.entropy(era_numpy(inputs, target)).min() >= target - FLOAT32_TOL

    expected = reference.softmax_era(inputs, era_keras.entropy_floor(num_classes, target).constant)
    error_bound = (UNIT_ROUNDOFF[dtype] + 2e-6) * np.abs(expected)
    rounded = to_numpy(ops.cast(out, "float32")).astype(np.float64)
    assert np.all(np.abs(rounded - expected) <= error_bound)

    p = np.exp(expected - expected.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = reference.entropy(expected)
    sensitivity = p * np.abs(np.log(np.maximum(p, 1e-300)) + h[:, None])
    entropy_bound = 2.0 * (sensitivity * error_bound).sum(-1) + FLOAT32_TOL
    assert np.all(reference.entropy(rounded) >= target - entropy_bound)
    # The argmax survives, except where rounding made the top two logits equal.
    top_two = np.sort(rounded)[:, -2:]
    assert np.all((rounded.argmax(-1) == inputs.argmax(-1)) | (top_two[:, 0] == top_two[:, 1]))


def test_mixed_precision_model_with_float32_head_meets_the_float32_floor():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((16,))
        logits = keras.layers.Dense(10)(inputs)
        outputs = era_keras.SoftmaxERA(0.6, dtype="float32")(logits)
        model = keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy(policy)
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32) * 100
    z = to_numpy(model(x)).astype(np.float64)
    assert reference.entropy(z).min() >= 0.6 - FLOAT32_TOL


@pytest.mark.parametrize(
    "num_classes, target, floor, message",
    [
        (10, 2.5, "tight", r"admissible range \(0\.0000, 2\.3026\)"),
        (10, 2.3, "paper", r"admissible range \(-0\.0597, 2\.2429\)"),
        (1000, 7.0, "paper", r"admissible range \(-0\.0597, 6\.8481\)"),
        (10, 0.0, "tight", r"admissible range"),
        (2, -0.5, "paper", r"admissible range"),
    ],
)
def test_inadmissible_targets_raise_with_the_range(num_classes, target, floor, message):
    with pytest.raises(ValueError, match=message):
        era_keras.softmax_era(ops.zeros((1, num_classes)), target, floor=floor)
    with pytest.raises(ValueError, match=message):
        era_keras.SoftmaxERA(target, floor=floor)(ops.zeros((1, num_classes)))
    with pytest.raises(ValueError, match=message):
        era_keras.entropy_floor(num_classes, target, floor=floor)


def test_one_class_and_bad_options_raise():
    with pytest.raises(ValueError, match="at least 2 classes"):
        era_keras.SoftmaxERA(0.6)(ops.zeros((4, 1)))
    with pytest.raises(ValueError, match="floor must be one of"):
        era_keras.SoftmaxERA(0.6, floor="loose")
    with pytest.raises(ValueError, match="inverse must be one of"):
        era_keras.SoftmaxERA(0.6, inverse="newton")
    with pytest.raises(ValueError, match="tau must be > 1"):
        era_keras.SoftmaxERA(0.6, tau=0.5)


@pytest.mark.parametrize("tau", [math.e, math.e * (1 + 1e-3), math.e * (1 - 1e-3)])
def test_tau_near_e_raises_because_the_inverse_has_no_slope_there(tau):
    """log(tau)/tau peaks at 1/e when tau = e, where W_-1 has no slope: the README's claim."""
    with pytest.raises(ValueError, match="pick tau away from e"):
        era_keras.SoftmaxERA(0.6, tau=tau)
    with pytest.raises(ValueError, match="pick tau away from e"):
        era_keras.softmax_era(ops.zeros((1, 10)), 0.6, tau=tau)
    with pytest.raises(ValueError, match="pick tau away from e"):
        era_keras.admissible_range(10, tau=tau)


def test_tau_away_from_e_keeps_the_floor():
    logits = adversarial_logits(np.random.default_rng(5), 32, 10)
    for tau in (2.0, 3.0, 8.0):
        out = era_keras.softmax_era(ops.convert_to_tensor(logits), 0.6, tau=tau)
        assert reference.entropy(to_numpy(out)).min() >= 0.6 - FLOAT32_TOL


def test_training_only_serves_plain_logits_at_inference():
    layer = era_keras.SoftmaxERA(0.6, training_only=True)
    logits = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32) * 20
    np.testing.assert_array_equal(to_numpy(layer(logits, training=False)), logits)
    trained = to_numpy(layer(logits, training=True)).astype(np.float64)
    assert reference.entropy(trained).min() >= 0.6 - FLOAT32_TOL
    np.testing.assert_array_equal(trained.argmax(-1), logits.argmax(-1))
    assert era_keras.SoftmaxERA.from_config(layer.get_config()).training_only


def build_model(layer):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, layer(keras.layers.Dense(10)(hidden)))


@pytest.mark.parametrize(
    "layer_kwargs",
    [
        {"target_entropy": 0.6},
        {"target_entropy": 1.0, "floor": "paper", "inverse": "approx"},
        {"target_entropy": 0.3, "training_only": True},
    ],
)
def test_keras_save_and_load_gives_identical_outputs(tmp_path, layer_kwargs):
    model = build_model(era_keras.SoftmaxERA(**layer_kwargs))
    x = np.random.default_rng(0).standard_normal((16, 12)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(restored(x)), to_numpy(model(x)))
    assert restored.layers[-1].get_config() == model.layers[-1].get_config()


@pytest.mark.skipif(BACKEND == "torch", reason="jit_compile means XLA (TF) or jax.jit")
def test_runs_compiled_with_xla_or_jit():
    model = build_model(era_keras.SoftmaxERA(0.6))
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    compiled = model.predict(x, verbose=0)
    np.testing.assert_allclose(compiled, to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert reference.entropy(compiled.astype(np.float64)).min() >= 0.6 - FLOAT32_TOL


@pytest.mark.parametrize("num_classes", [2, 1000])
def test_an_infinite_logit_gives_the_one_hot_limit_and_keeps_the_floor(num_classes):
    """+inf is the largest finite logit of its sign: the row's output is what a huge logit
    gives (finite, on the floor), several +inf share equally, -inf is a very small logit."""
    target = 0.6
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, num_classes)).astype("float32")
    logits = base.copy()
    logits[0, 0] = np.inf                        # one +inf
    logits[1, :2] = np.inf                       # two share it
    logits[2, 1:] = -np.inf                      # everything else impossible
    out = to_numpy(era_keras.SoftmaxERA(target)(ops.convert_to_tensor(logits)))
    assert np.all(np.isfinite(out))  # the layer returns logits whose softmax has the floor
    probs = _softmax(out)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    entropy = -(probs * np.log(np.clip(probs, 1e-30, 1.0))).sum(axis=-1)
    assert np.all(entropy >= target - 1e-4), entropy
    assert probs[0, 0] == probs[0].max()
    np.testing.assert_allclose(probs[1, 0], probs[1, 1], rtol=1e-5)
    # The same as the largest finite float32 logit in its place.
    finite = base.copy()
    finite[0, 0] = np.finfo("float32").max
    expected = _softmax(to_numpy(era_keras.SoftmaxERA(target)(ops.convert_to_tensor(finite))))
    np.testing.assert_allclose(probs[0], expected[0], rtol=1e-5, atol=1e-7)


def _softmax(x):
    x = np.asarray(x, "float64")
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"target_entropy": "0.6"}, TypeError, "target_entropy must be"),
    ({"tau": "4"}, TypeError, "tau must be"),
    ({"target_entropy": -0.1}, ValueError, "lower end of the admissible range"),
])
def test_softmax_era_arguments_are_checked_in_the_constructor(kwargs, error, message):
    with pytest.raises(error, match=message):
        era_keras.SoftmaxERA(**kwargs)


def test_a_target_above_the_admissible_range_is_refused_at_build_with_the_range():
    with pytest.raises(ValueError, match="admissible"):
        era_keras.SoftmaxERA(5.0)(ops.zeros((2, 10)))  # log(10) = 2.30 nats at most
