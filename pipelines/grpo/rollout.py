"""Sampling groups of completions as token ids.

A rollout's layout is the prompts padded on the LEFT to a bucketed width (the batch's
longest prompt rounded up to a multiple of `PROMPT_BUCKET`, at most `max_prompt_tokens`),
then `max_new_tokens` positions for the responses, so every row's response starts at the
same index and the update runs over the batch's real width, not `max_prompt_tokens`.
A few widths exist, so the compiled functions are traced a few times, not per batch.

Qwen-style models (see `generate.supports_left_padded_decode`) decode with
`generate.left_padded_decode`: exactly the new tokens, stopping once every row has ended,
sampling inside the compiled loop. Other models (Gemma), or samplers other than greedy
and top-p, go through keras-hub's own `generate` (prompts on the left, padded on the
right), whose output is laid out the same way afterwards.
"""

import dataclasses

import numpy as np

from pipelines.common.errors import UserError
from pipelines.grpo.generate import (
    Sampling,
    compile_left_padded_decode,
    stop_token_ids,
    supports_left_padded_decode,
)
from pipelines.grpo.processes import to_numpy
from pipelines.grpo.step import enable_compilation_cache

# Prompt widths are rounded up to a multiple of this, so a batch whose longest prompt
# is a little longer or shorter reuses the compiled functions.
PROMPT_BUCKET = 8


def _left_pad(rows, width, fill):
    """(batch, width) array of 1-D rows, each at the end (left padding)."""
    out = np.full((len(rows), width), fill, dtype=np.asarray(rows[0]).dtype)
    for i, row in enumerate(rows):
        out[i, width - len(row):] = row
    return out


def _right_pad(rows, width, fill):
    """(batch, width) array of 1-D rows, each at the start (right padding)."""
    out = np.full((len(rows), width), fill, dtype=np.asarray(rows[0]).dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@dataclasses.dataclass
class Rollout:
    prompts: list
    token_ids: np.ndarray      # (batch, width + new tokens): prompt (padded on the left),
    #                            then response
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

    def widen(self, width):
        """This rollout padded on the left to `width` positions (pad id 0, masks False)."""
        extra = width - self.token_ids.shape[1]
        if extra <= 0:
            return self
        pad = ((0, 0), (extra, 0))
        return Rollout(self.prompts, np.pad(self.token_ids, pad), np.pad(self.padding_mask, pad),
                       np.pad(self.response_mask, pad), self.completions, self.truncated)

    @staticmethod
    def concatenate(rollouts):
        """One rollout holding the rows of several, padded on the left to the widest."""
        width = max(r.token_ids.shape[1] for r in rollouts)
        rollouts = [r.widen(width) for r in rollouts]
        return Rollout(
            [p for r in rollouts for p in r.prompts],
            np.concatenate([r.token_ids for r in rollouts]),
            np.concatenate([r.padding_mask for r in rollouts]),
            np.concatenate([r.response_mask for r in rollouts]),
            [c for r in rollouts for c in r.completions],
            np.concatenate([r.truncated for r in rollouts]),
        )


class RolloutGenerator:
    def __init__(self, causal_lm, max_prompt_tokens, max_new_tokens, samplers, shard=None,
                 decoder="auto"):
        """`shard` lays a batch's arrays out on the devices (the loop passes
        `distribution.shard_batch` bound to its distribution); None leaves them as they are.
        `decoder`: "auto" decodes left-padded prompts where the model and sampler allow
        it; "keras_hub" always uses keras-hub's `generate` (the reference the tests
        compare against)."""
        if causal_lm.preprocessor is None:
            raise ValueError("The CausalLM needs a preprocessor (tokenizer) to encode prompts.")
        if decoder not in ("auto", "keras_hub"):
            raise ValueError(f"decoder must be 'auto' or 'keras_hub', not {decoder!r}.")
        enable_compilation_cache()
        self.causal_lm = causal_lm
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.samplers = dict(samplers)
        self.decoder = decoder
        self._functions = {}
        self._decoders = {}
        self._unseeded_calls = 0
        self.shard = shard or (lambda arrays: arrays)
        self.stop_token_ids = stop_token_ids(causal_lm)
        self.pad_id = getattr(self.tokenizer, "pad_token_id", 0) or 0

    @property
    def sequence_length(self):
        """The widest rollout: max_prompt_tokens + max_new_tokens."""
        return self.max_prompt_tokens + self.max_new_tokens

    def prompt_width(self, lengths):
        """The padded prompt width of a batch whose prompts have these token counts."""
        longest = max(int(np.max(lengths, initial=1)), 1)
        return min(self.max_prompt_tokens, -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET)

    def tokenize(self, prompts):
        """Each prompt's token ids (a list of int32 arrays); refuses one that is too long."""
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
        ids = np.asarray(encoded["token_ids"]).astype("int32")
        return [row[keep] for row, keep in zip(ids, mask)]

    def encode_prompts(self, prompts):
        """(token_ids, prompt_mask) in the rollout layout: (batch, width + max_new_tokens),
        each prompt ending at index `width` (padded on the left), then room for the
        responses."""
        rows = self.tokenize(prompts)
        width = self.prompt_width([len(r) for r in rows])
        room = ((0, 0), (0, self.max_new_tokens))
        ids = np.pad(_left_pad(rows, width, self.pad_id), room, constant_values=self.pad_id)
        mask = np.pad(_left_pad([np.ones(len(r), bool) for r in rows], width, False), room)
        return ids, mask

    def generate(self, prompts, sampler_name, seed=None, stream=0):
        """Sample one completion per prompt with the named sampler (reseeded by `seed`).

        `stream` picks an independent sample stream of the same seed (e.g. a further
        sampling round of the same step).
        """
        token_ids, prompt_mask = self.encode_prompts(prompts)
        width = token_ids.shape[1] - self.max_new_tokens
        sampling = Sampling.of(self.samplers[sampler_name])
        if (self.decoder == "auto" and sampling is not None
                and supports_left_padded_decode(self.causal_lm)):
            new_tokens, new_mask = self._decode(token_ids[:, :width], prompt_mask[:, :width],
                                                sampler_name, sampling, seed, stream)
        else:
            new_tokens, new_mask = self._keras_hub_generate(prompts, sampler_name, seed, stream)
        token_ids[:, width:] = np.where(new_mask, new_tokens, self.pad_id)
        response_mask = np.zeros_like(prompt_mask)
        response_mask[:, width:] = new_mask
        ended = (np.isin(new_tokens, self.stop_token_ids) & new_mask).any(axis=1)
        return Rollout(list(prompts), token_ids, prompt_mask | response_mask, response_mask,
                       self.decode(token_ids, response_mask), ~ended)

    def _decode(self, token_ids, prompt_mask, sampler_name, sampling, seed, stream):
        """(new tokens, their mask) of shape (batch, max_new_tokens) from the compiled
        left-padded decode loop; the mask holds each row's tokens up to its end token."""
        if sampler_name not in self._decoders:
            self._decoders[sampler_name] = compile_left_padded_decode(
                self.causal_lm, self.max_new_tokens, sampling, self.stop_token_ids, self.pad_id)
        if seed is None:  # a fresh stream per call, as keras-hub's seed generator gives
            seed = getattr(self.samplers[sampler_name], "seed", None) or 0
            stream = (1 << 20) + self._unseeded_calls
            self._unseeded_calls += 1
        inputs = self.shard({"token_ids": token_ids, "padding_mask": prompt_mask})
        new_tokens, _ = self._decoders[sampler_name](
            inputs["token_ids"], inputs["padding_mask"], np.array([seed, stream], "int32"))
        new_tokens = to_numpy(new_tokens).astype("int32")
        is_stop = np.isin(new_tokens, self.stop_token_ids)
        # Up to and including the first end token.
        return new_tokens, (np.cumsum(is_stop, axis=1) - is_stop) == 0

    def _generate_function(self, sampler_name):
        # keras-hub reads `self.sampler` when it traces the generate step: set it first.
        self.causal_lm.sampler = self.samplers[sampler_name]
        if sampler_name not in self._functions:
            self.causal_lm.generate_function = None
            self._functions[sampler_name] = self.causal_lm.make_generate_function()
        self.causal_lm.generate_function = self._functions[sampler_name]
        return self._functions[sampler_name]

    def _keras_hub_generate(self, prompts, sampler_name, seed, stream):
        """(new tokens, their mask), (batch, max_new_tokens), from keras-hub's generate:
        prompts on the left of a `sequence_length` row, padded on the right, decoded from
        the shortest prompt to the end of the row."""
        sampler = self.samplers[sampler_name]
        if seed is not None and getattr(sampler, "seed_generator", None) is not None:
            state = sampler.seed_generator.state
            state.assign(np.array([seed, stream], dtype=state.dtype))
        rows = self.tokenize(prompts)
        token_ids = _right_pad(rows, self.sequence_length, self.pad_id)
        prompt_mask = _right_pad([np.ones(len(r), bool) for r in rows], self.sequence_length,
                                 False)
        generate = self._generate_function(sampler_name)
        out = generate(
            self.shard({"token_ids": token_ids, "padding_mask": prompt_mask}),
            stop_token_ids=self.stop_token_ids,
        )
        out_ids = to_numpy(out["token_ids"]).astype("int32")
        response = to_numpy(out["padding_mask"]).astype(bool) & ~prompt_mask
        # keras-hub fills the whole row, so a prompt shorter than max_prompt_tokens
        # leaves room for more: keep the first max_new_tokens.
        response &= np.cumsum(response, axis=1) <= self.max_new_tokens
        new_tokens = np.full((len(rows), self.max_new_tokens), self.pad_id, "int32")
        new_mask = np.zeros(new_tokens.shape, bool)
        for i, (ids, keep) in enumerate(zip(out_ids, response)):
            kept = ids[keep]
            new_tokens[i, :kept.size], new_mask[i, :kept.size] = kept, True
        return new_tokens, new_mask

    def decode(self, token_ids, response_mask):
        rows = []
        for ids, mask in zip(token_ids, response_mask):
            rows.append([int(t) for t in ids[mask] if t not in self.stop_token_ids])
        texts = self.tokenizer.detokenize(rows) if any(rows) else [""] * len(rows)
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                 for t in np.asarray(texts).reshape(-1)]
        return [text if row else "" for text, row in zip(texts, rows)]
