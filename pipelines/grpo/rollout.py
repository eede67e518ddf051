"""Sampling groups of completions with keras-hub generation, as token ids.

`RolloutGenerator` pads every prompt batch to one shape, `max_prompt_tokens +
max_new_tokens`, so each compiled generate function is traced once. It keeps one compiled
function per named sampler ("train" top-p sampling, "greedy", ...): keras-hub bakes the
sampler into the function when it is traced, so each is traced with its own sampler set.
"""

import dataclasses

import numpy as np

from pipelines.common.errors import UserError


@dataclasses.dataclass
class Rollout:
    prompts: list
    token_ids: np.ndarray      # (batch, prompt + new tokens): prompt, then response
    padding_mask: np.ndarray   # (batch, time): prompt and response tokens (up to the end token)
    response_mask: np.ndarray  # (batch, time): generated tokens only, end token included
    completions: list          # decoded responses, end token dropped
    truncated: np.ndarray = None  # (batch,): stopped by max_new_tokens, not an end token

    def __post_init__(self):
        if self.truncated is None:
            self.truncated = np.zeros(len(self.token_ids), bool)

    @property
    def response_lengths(self):
        return self.response_mask.sum(axis=1)

    def select(self, rows):
        """The rollout of the given rows, in that order."""
        rows = list(rows)
        return Rollout([self.prompts[i] for i in rows], self.token_ids[rows],
                       self.padding_mask[rows], self.response_mask[rows],
                       [self.completions[i] for i in rows], self.truncated[rows])

    @staticmethod
    def concatenate(rollouts):
        """One rollout holding the rows of several (all padded to the same length)."""
        return Rollout(
            [p for r in rollouts for p in r.prompts],
            np.concatenate([r.token_ids for r in rollouts]),
            np.concatenate([r.padding_mask for r in rollouts]),
            np.concatenate([r.response_mask for r in rollouts]),
            [c for r in rollouts for c in r.completions],
            np.concatenate([r.truncated for r in rollouts]),
        )


class RolloutGenerator:
    def __init__(self, causal_lm, max_prompt_tokens, max_new_tokens, samplers, shard=None):
        """`shard` lays a batch's arrays out on the devices (the loop passes
        `distribution.shard_batch` bound to its distribution); None leaves them as they are."""
        if causal_lm.preprocessor is None:
            raise ValueError("The CausalLM needs a preprocessor (tokenizer) to encode prompts.")
        self.causal_lm = causal_lm
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.samplers = dict(samplers)
        self._functions = {}
        self.shard = shard or (lambda arrays: arrays)
        self.stop_token_ids = (self.tokenizer.end_token_id,)

    @property
    def sequence_length(self):
        return self.max_prompt_tokens + self.max_new_tokens

    def encode_prompts(self, prompts):
        """(token_ids, padding_mask) of shape (batch, sequence_length), prompts left-aligned."""
        encoded = self.causal_lm.preprocessor.generate_preprocess(
            list(prompts), sequence_length=self.max_prompt_tokens + 1
        )
        mask = np.asarray(encoded["padding_mask"]).astype(bool)
        too_long = np.flatnonzero(mask[:, -1])
        if too_long.size:
            raise UserError(
                f"Prompt {prompts[too_long[0]]!r} is longer than max_prompt_tokens="
                f"{self.max_prompt_tokens} tokens; raise --max-prompt-tokens."
            )
        ids = np.asarray(encoded["token_ids"])[:, :-1]
        pad = ((0, 0), (0, self.max_new_tokens))
        pad_id = getattr(self.tokenizer, "pad_token_id", 0) or 0
        return (np.pad(ids, pad, constant_values=pad_id).astype("int32"),
                np.pad(mask[:, :-1], pad, constant_values=False))

    def _generate_function(self, sampler_name):
        # keras-hub reads `self.sampler` when it traces the generate step: set it first.
        self.causal_lm.sampler = self.samplers[sampler_name]
        if sampler_name not in self._functions:
            self.causal_lm.generate_function = None
            self._functions[sampler_name] = self.causal_lm.make_generate_function()
        self.causal_lm.generate_function = self._functions[sampler_name]
        return self._functions[sampler_name]

    def generate(self, prompts, sampler_name, seed=None, stream=0):
        """Sample one completion per prompt with the named sampler (reseeded by `seed`).

        `stream` picks an independent sample stream of the same seed (e.g. a further
        sampling round of the same step).
        """
        sampler = self.samplers[sampler_name]
        if seed is not None and getattr(sampler, "seed_generator", None) is not None:
            state = sampler.seed_generator.state
            state.assign(np.array([seed, stream], dtype=state.dtype))
        token_ids, prompt_mask = self.encode_prompts(prompts)
        generate = self._generate_function(sampler_name)
        out = generate(
            self.shard({"token_ids": token_ids, "padding_mask": prompt_mask}),
            stop_token_ids=self.stop_token_ids,
        )
        token_ids = np.asarray(out["token_ids"]).astype("int32")
        padding_mask = np.asarray(out["padding_mask"]).astype(bool)
        response_mask = padding_mask & ~prompt_mask
        # keras-hub fills the whole padded sequence, so a prompt shorter than
        # max_prompt_tokens leaves room for more: keep the first max_new_tokens.
        response_mask &= np.cumsum(response_mask, axis=1) <= self.max_new_tokens
        padding_mask = prompt_mask | response_mask
        ended = (np.isin(token_ids, self.stop_token_ids) & response_mask).any(axis=1)
        return Rollout(list(prompts), token_ids, padding_mask, response_mask,
                       self.decode(token_ids, response_mask), ~ended)

    def decode(self, token_ids, response_mask):
        rows = []
        for ids, mask in zip(token_ids, response_mask):
            rows.append([int(t) for t in ids[mask] if t not in self.stop_token_ids])
        texts = self.tokenizer.detokenize(rows) if any(rows) else [""] * len(rows)
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                 for t in np.asarray(texts).reshape(-1)]
        return [text if row else "" for text, row in zip(texts, rows)]
