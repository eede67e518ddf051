"""Supervised warm start: teach a tiny model the task's format before GRPO.

GRPO can only reinforce what the policy sometimes gets right, so a random-init model first
learns from worked solutions with `CausalLM.fit` (Keras' progress bar). The loss covers
the completion tokens only: the prompt positions get sample weight 0.
"""

import keras
import numpy as np


def warm_start_examples(causal_lm, problems, sequence_length):
    """(x, y, sample_weight) arrays: prompt + solution + end token, loss on the solution."""
    preprocessor = causal_lm.preprocessor
    texts = [p.prompt + p.solution for p in problems]
    x, y, weights = preprocessor(texts, sequence_length=sequence_length)
    prompt_mask = np.asarray(
        preprocessor.generate_preprocess(
            [p.prompt for p in problems], sequence_length=sequence_length
        )["padding_mask"]
    ).astype(bool)
    # y[t] is token t + 1: it is a solution token when position t + 1 is past the prompt.
    weights = np.asarray(weights, dtype="float32")
    weights[:, :-1] *= ~prompt_mask[:, 1:]
    weights[:, -1] *= ~prompt_mask[:, -1]
    x = {key: np.asarray(value) for key, value in x.items()}
    return x, np.asarray(y), weights


def warm_start(causal_lm, problems, batch_size, learning_rate, sequence_length, seed=0,
               verbose="auto"):
    """One epoch of Adam on next-token cross-entropy of the problems' solutions."""
    if any(p.solution is None for p in problems):
        raise ValueError(
            "The warm start needs worked solutions, which only built-in tasks have; "
            "pass --warm-start-steps 0 for JSONL data."
        )
    x, y, weights = warm_start_examples(causal_lm, problems, sequence_length)
    causal_lm.compile(
        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")],
    )
    keras.utils.set_random_seed(seed)
    # The examples are already tokenized (with the prompt weights zeroed), so fit must not
    # run the preprocessor on them again: detach it for the fit.
    preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
    try:
        history = causal_lm.fit(
            x, y, sample_weight=weights, batch_size=batch_size, epochs=1, shuffle=True,
            verbose=verbose,
        )
    finally:
        causal_lm.preprocessor = preprocessor
    return history.history
