"""Tiny random-init Hugging Face checkpoints, written by `transformers` itself, offline.

`write_checkpoint(family, directory)` builds a small model of the family's transformers
class (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `GemmaForCausalLM`, `Gemma3ForCausalLM`,
`LlamaForCausalLM`) from its config, and saves it with `save_pretrained` (config.json,
model.safetensors, or shards with model.safetensors.index.json), with a tokenizer of the
kind the family ships:

- Qwen2, Qwen3 and Llama 3: byte-level BPE built with the `tokenizers` library (one token
  per byte: the 256 byte symbols, plus the family's special tokens as added tokens),
  saved by `PreTrainedTokenizerFast.save_pretrained` (tokenizer.json,
  tokenizer_config.json) plus vocab.json and merges.txt. The merge table holds one merge
  of two NUL bytes: keras-hub refuses an empty one, and no text here contains NUL.
- Gemma and Gemma 3: a character-level SentencePiece model (tokenizer.model) trained here
  on the built-in tasks' alphabet, with the chat-turn markers as user-defined symbols.

Each checkpoint's tokenizer_config.json carries the family's real chat template
(tests/grpo/chat_templates/: Qwen2.5-Instruct's, Meta-Llama-3-Instruct's, Gemma-IT's).
"""

import json
import pathlib

import numpy as np

TEMPLATES = pathlib.Path(__file__).with_name("chat_templates")

FAMILIES = ("qwen2", "qwen3", "gemma", "gemma3", "llama3")

# model_type as transformers writes it into config.json.
MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
               "gemma3": "gemma3_text", "llama3": "llama"}

_SPECIALS = {
    "qwen2": dict(tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  bos=None, eos="<|im_end|>", pad="<|endoftext|>", template="qwen2.5"),
    "qwen3": dict(tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  bos=None, eos="<|im_end|>", pad="<|endoftext|>", template="qwen2.5"),
    "llama3": dict(tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                           "<|end_header_id|>", "<|eot_id|>"],
                   bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|end_of_text|>",
                   template="llama3"),
    "gemma": dict(tokens=["<start_of_turn>", "<end_of_turn>"],
                  bos="<bos>", eos="<eos>", pad="<pad>", template="gemma"),
    "gemma3": dict(tokens=["<start_of_turn>", "<end_of_turn>", "<img>", "<start_of_image>",
                           "<end_of_image>"],
                   bos="<bos>", eos="<eos>", pad="<pad>", template="gemma"),
}


def chat_template(family):
    """The real chat template the family's checkpoint carries (as in tokenizer_config.json)."""
    name = _SPECIALS[family]["template"]
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _byte_level_tokenizer(specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    symbols = [byte_symbols[b] for b in range(256)]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    nul = byte_symbols[0]
    vocab[nul + nul] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(nul, nul)]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return tokenizer, vocab, [f"{nul} {nul}"]


def write_tokenizer(family, directory):
    """Write the family's tokenizer files and tokenizer_config.json (with its chat template)."""
    from transformers import PreTrainedTokenizerFast

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = _SPECIALS[family]
    if family.startswith("gemma"):
        from pipelines.grpo.models import char_sentencepiece_proto

        (directory / "tokenizer.model").write_bytes(char_sentencepiece_proto(spec["tokens"]))
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(
            model_proto=(directory / "tokenizer.model").read_bytes())
        vocabulary_size = processor.get_piece_size()
        config = {
            "tokenizer_class": "GemmaTokenizer", "bos_token": spec["bos"],
            "eos_token": spec["eos"], "pad_token": spec["pad"], "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False,
            "chat_template": chat_template(family),
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        return vocabulary_size
    tokenizer, vocab, merges = _byte_level_tokenizer(spec["tokens"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=spec["bos"], eos_token=spec["eos"],
        pad_token=spec["pad"])
    fast.save_pretrained(str(directory))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = chat_template(family)  # where released checkpoints keep it
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(fast)


def model_config(family, vocabulary_size, num_layers=2, hidden_size=64, num_heads=4,
                 init_std=0.02, tie_word_embeddings=None, num_kv_heads=None, **overrides):
    """The transformers config of a tiny `family` model."""
    import transformers

    spec = _SPECIALS[family]
    head_dim = hidden_size // num_heads
    common = dict(
        vocab_size=vocabulary_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or max(1, num_heads // 2), max_position_embeddings=512,
        initializer_range=init_std,
    )
    if tie_word_embeddings is not None:
        common["tie_word_embeddings"] = tie_word_embeddings
    if family == "qwen2":
        config = transformers.Qwen2Config(**common)
    elif family == "qwen3":
        config = transformers.Qwen3Config(head_dim=head_dim, rms_norm_eps=1e-5, **common)
    elif family == "llama3":
        config = transformers.LlamaConfig(head_dim=head_dim, **common)
    elif family == "gemma":
        config = transformers.GemmaConfig(head_dim=head_dim, **common)
    elif family == "gemma3":
        config = transformers.Gemma3TextConfig(
            head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=128,
            **common)
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config, spec


def write_checkpoint(family, directory, seed=0, num_layers=2, hidden_size=64, num_heads=4,
                     init_std=0.02, max_shard_size=None, tie_word_embeddings=None,
                     num_kv_heads=None):
    """Save a tiny random-init `family` checkpoint to `directory`; returns the torch model.

    `init_std` is the normal init's standard deviation (transformers' `initializer_range`);
    `max_shard_size` (e.g. "20KB") makes `save_pretrained` shard the weights;
    `num_kv_heads` defaults to half the query heads (grouped-query attention).
    """
    import torch
    import transformers

    directory = pathlib.Path(directory)
    vocabulary_size = write_tokenizer(family, directory)
    config, spec = model_config(family, vocabulary_size, num_layers, hidden_size, num_heads,
                                init_std, tie_word_embeddings, num_kv_heads)
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    ids = _special_ids(family, directory, tokenizer_config)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        ids.get(spec["bos"]), ids.get(spec["eos"]), ids.get(spec["pad"]))
    torch.manual_seed(seed)
    classes = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
               "llama3": "LlamaForCausalLM", "gemma": "GemmaForCausalLM",
               "gemma3": "Gemma3ForCausalLM"}
    model = getattr(transformers, classes[family])(config).eval()
    # Norm scales init to 1 (0 for Gemma's 1 + w): perturb them so a converter that
    # forgot one would show in the log-probs.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return model


def _special_ids(family, directory, tokenizer_config):
    if family.startswith("gemma"):
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(
            model_proto=(directory / "tokenizer.model").read_bytes())
        return {piece: processor.piece_to_id(piece)
                for piece in ["<bos>", "<eos>", "<pad>"] + _SPECIALS[family]["tokens"]}
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}


def torch_next_token_log_probs(model, token_ids, dtype="float32"):
    """log p(token_t | tokens_<t) of a transformers model, (batch, time - 1), as numpy.

    Everything (weights, activations, the log-softmax) runs in `dtype`: "float32" as a
    user runs the model, "float64" for the exact reference the tolerances are set from.
    """
    import torch

    dtype = getattr(torch, dtype)
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
        logits = model.to(dtype)(input_ids=ids).logits
        log_p = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = torch.gather(log_p, -1, ids[:, 1:, None])[..., 0]
    model.to(torch.float32)
    return picked.numpy().astype("float64")


def random_token_ids(vocabulary_size, batch=2, length=24, seed=0):
    """Token ids drawn uniformly from the whole vocabulary (special tokens included)."""
    return np.random.default_rng(seed).integers(0, vocabulary_size, (batch, length)).astype(
        "int32")


def keras_next_token_log_probs(causal_lm, token_ids):
    """log p(token_t | tokens_<t) of a keras-hub CausalLM, (batch, time - 1), float32."""
    from keras import ops

    ids = np.asarray(token_ids, "int32")
    logits = causal_lm({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    log_p = ops.log_softmax(ops.cast(logits[:, :-1], "float32"), axis=-1)
    return ops.convert_to_numpy(ops.take_along_axis(log_p, ids[:, 1:, None], axis=-1)[..., 0])


def tolerance(torch32, torch64):
    """(8 e32 + 4 ulps of the largest |log p|, e32), e32 = max |torch32 - torch64|: how far
    two float32 evaluations of one network may differ (tests/grpo/test_hf_checkpoints.py
    derives it)."""
    e32 = float(np.abs(torch32 - torch64).max())
    ulp = float(np.spacing(np.float32(np.abs(torch64).max())))
    return 8 * e32 + 4 * ulp, e32
