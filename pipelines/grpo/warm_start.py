"""Supervised warm start: teach a tiny model the task's format before GRPO.

GRPO can only reinforce what the policy sometimes gets right, so a random-init model first
learns from worked solutions with `CausalLM.fit` (Keras' progress bar). The loss covers
the completion tokens only: the prompt positions get sample weight 0.
"""

import keras
import numpy as np

from pipelines.common.errors import UserError


def warm_start_examples(causal_lm, problems, sequence_length):
    """(x, y, sample_weight): prompt + solution + end token, loss on solution and end token.

    Built from `generate_preprocess` (start token, no end token), which every keras-hub
    CausalLM preprocessor has with the same meaning; their training `call`s differ
    (Gemma3's takes {"prompts", "responses"}).
    """
    if any(p.solution is None for p in problems):
        raise UserError(
            "The warm start needs worked solutions, which only built-in tasks have; "
            "pass --warm-start-steps 0 for JSONL data."
        )
    preprocessor = causal_lm.preprocessor
    end_id = preprocessor.tokenizer.end_token_id

    def encode(texts):
        out = preprocessor.generate_preprocess(texts, sequence_length=sequence_length + 1)
        return np.array(out["token_ids"]), np.array(out["padding_mask"]).astype(bool)

    ids, mask = encode([p.prompt + p.solution for p in problems])
    _, prompt_mask = encode([p.prompt for p in problems])
    lengths = mask.sum(axis=1)
    if (lengths >= sequence_length).any():
        longest = problems[int(np.argmax(lengths))]
        raise UserError(
            f"The worked solution {longest.solution!r} of prompt {longest.prompt!r} needs "
            f"{int(lengths.max()) + 1} tokens with the prompt and end token, more than "
            f"max_prompt_tokens + max_new_tokens = {sequence_length}; raise --max-new-tokens."
        )
    rows = np.arange(len(problems))
    ids[rows, lengths], mask[rows, lengths] = end_id, True
    # Position t of x predicts y[t] = token t + 1: a target when t + 1 is past the prompt.
    weights = (mask[:, 1:] & ~prompt_mask[:, 1:]).astype("float32")
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], weights


def warm_start(causal_lm, examples, batch_size, learning_rate, seed=0, verbose="auto"):
    """One epoch of Adam on next-token cross-entropy of `warm_start_examples`' output.

    The problems are freshly drawn at random, so they need no shuffling.
    """
    x, y, weights = examples
    steps = -(-len(y) // batch_size)
    # Linear warm-up, then cosine decay to 0: a tiny model learning from scratch ends
    # much more accurate than with a constant rate.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=learning_rate,
        warmup_steps=max(1, steps // 20),
    )
    causal_lm.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")],
    )
    keras.utils.set_random_seed(seed)
    # The examples are already tokenized (with the prompt weights zeroed), so fit must not
    # run the preprocessor on them again: detach it for the fit.
    preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
    try:
        history = causal_lm.fit(
            x, y, sample_weight=weights, batch_size=batch_size, epochs=1, shuffle=False,
            verbose=verbose,
        )
    finally:
        causal_lm.preprocessor = preprocessor
    return history.history
