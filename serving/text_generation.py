"""Text in, text out, from a generate servable that takes token ids (tokenizing client-side).

A generate SavedModel (`pipelines.grpo.generate`) holds no tokenizer, so it loads with
TensorFlow alone and in stock TF Serving. `TextGenerationClient` does the tokenizing:

    from keras_hub.tokenizers import Tokenizer
    from serving.client import TFServingRestClient

    rest = TFServingRestClient("http://localhost:8501")
    client = TextGenerationClient(
        lambda inputs, signature: rest.predict("grpo_policy_generate", inputs,
                                               signature_name=signature,
                                               request_format="inputs"),
        Tokenizer.from_preset("runs/grpo/export/preset"))
    client.generate(["12+7="], max_new_tokens=16, temperature=0.0)  # ["19"]

`predict(inputs, signature_name)` is any function that runs a signature and returns its
outputs as arrays (a TF Serving REST or gRPC client, or `serving.signature_runner`);
`tokenizer` is any object with `tokenize(list of str)` and `detokenize(list of id
lists)`, such as a keras-hub tokenizer loaded from the exported preset. Prompts are
encoded as keras-hub's CausalLM preprocessors encode them for generation: the tokenizer's
start token (Gemma's `<bos>`; Qwen has none) first, no end token.
"""

import numpy as np

OPTIONS_SIGNATURE = "generate_with_options"


def _to_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class TextGenerationClient:
    def __init__(self, predict, tokenizer, add_start_token=True):
        self.predict = predict
        self.tokenizer = tokenizer
        start = getattr(tokenizer, "start_token_id", None) if add_start_token else None
        self.prefix = [] if start is None else [int(start)]

    def encode(self, prompts):
        """(token_ids (batch, longest prompt), lengths (batch,)) as int32 arrays."""
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, 0), np.int32), np.zeros((0,), np.int32)
        rows = [np.asarray(self.prefix + list(np.asarray(ids).reshape(-1)), np.int32)
                for ids in self.tokenizer.tokenize(prompts)]
        lengths = np.array([len(row) for row in rows], np.int32)
        if (lengths == 0).any():
            raise ValueError("Every prompt needs at least one token; got an empty prompt.")
        token_ids = np.zeros((len(rows), lengths.max()), np.int32)
        for i, row in enumerate(rows):
            token_ids[i, : len(row)] = row
        return token_ids, lengths

    def generate_ids(self, prompts, max_new_tokens=64, temperature=1.0, top_p=1.0, seed=0):
        """The servable's (output_ids, output_lengths) for `prompts`."""
        token_ids, lengths = self.encode(prompts)
        if len(lengths) == 0:  # nothing to ask the server
            return np.zeros((0, max_new_tokens), np.int32), lengths
        outputs = self.predict({
            "token_ids": token_ids,
            "lengths": lengths,
            "temperature": np.float32(temperature),
            "top_p": np.float32(top_p),
            "max_new_tokens": np.int32(max_new_tokens),
            "seed": np.int32(seed),
        }, OPTIONS_SIGNATURE)
        return (np.asarray(outputs["output_ids"]),
                np.asarray(outputs["output_lengths"]).reshape(-1))

    def generate(self, prompts, max_new_tokens=64, temperature=1.0, top_p=1.0, seed=0):
        """One completion (text, end token dropped) per prompt."""
        ids, lengths = self.generate_ids(prompts, max_new_tokens, temperature, top_p, seed)
        rows = [[int(t) for t in row[:n]] for row, n in zip(ids, lengths)]
        if not any(rows):
            return [""] * len(rows)
        texts = np.asarray(self.tokenizer.detokenize(rows)).reshape(-1)
        return [_to_text(text) if row else "" for text, row in zip(texts, rows)]
