"""keras-hub causal LMs for GRPO: real presets, and tiny random-init ones built offline.

`load_causal_lm` takes a keras-hub preset name (e.g. "qwen2.5_0.5b_en") or a local preset
directory, as `keras_hub.models.CausalLM.from_preset` does, and turns a missing preset into
an error that says what was looked for. `tiny_causal_lm` builds a small random-init model
of a real keras-hub class (Qwen 2.5, Qwen3, Gemma, Gemma3) with a tokenizer built here:

- Qwen and Qwen3 use byte-level BPE: the vocabulary is the 256 byte symbols (so any text
  encodes) plus the family's special tokens, with no merges: one token per character.
- Gemma and Gemma3 use SentencePiece: a character-level model trained here, offline, on
  the task alphabet, with byte fallback for anything else.

Character-level tokens make the built-in tasks' answers 10+ tokens long, which the spec's
notes say entropy collapse (and so anything ERA can prevent) needs.
"""

import glob
import io
import os
import string

import keras
import keras_hub
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from pipelines.common.errors import UserError

TINY_FAMILIES = ("qwen", "qwen3", "gemma", "gemma3")

# Text the SentencePiece models are trained on: every character the built-in tasks use.
TASK_ALPHABET = string.digits + string.ascii_letters + " +-*/=:,.;()[]{}\\#?!'\"%<>_|^&$@~`"


def _byte_level_bpe(special_tokens):
    """(vocabulary, merges): one token per byte symbol, then the special tokens.

    Specials come last, as in Qwen's own vocabulary: QwenTokenizer pads with id 0, and
    keras-hub's sampler would take padding that equals the end token for a finished
    sequence. BytePairTokenizer cannot take an empty merge table, so it gets one merge of
    two NUL bytes, which task text never contains.
    """
    _, symbols = bytes_to_unicode()
    vocabulary = {symbol: index for index, symbol in enumerate(symbols)}
    nul = symbols[bytes_to_unicode()[0].index(b"\x00")]
    vocabulary[nul + nul] = len(vocabulary)
    for token in special_tokens:
        vocabulary[token] = len(vocabulary)
    return vocabulary, [f"{nul} {nul}"]


def char_sentencepiece_proto(special_tokens):
    import sentencepiece

    model = io.BytesIO()
    sentences = [TASK_ALPHABET, " ".join(TASK_ALPHABET)] * 4
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="char",
        vocab_size=len(set(TASK_ALPHABET)) + len(special_tokens) + 256 + 2,
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<bos>",
        eos_piece="<eos>",
        user_defined_symbols=special_tokens,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return model.getvalue()


def tiny_tokenizer(family):
    """A small keras-hub tokenizer of `family`'s class, built offline."""
    if family == "qwen":
        vocabulary, merges = _byte_level_bpe(["<|endoftext|>"])
        return keras_hub.models.QwenTokenizer(vocabulary=vocabulary, merges=merges)
    if family == "qwen3":
        vocabulary, merges = _byte_level_bpe(["<|endoftext|>", "<|im_end|>"])
        return keras_hub.models.Qwen3Tokenizer(vocabulary=vocabulary, merges=merges)
    if family == "gemma":
        return keras_hub.models.GemmaTokenizer(proto=char_sentencepiece_proto([]))
    if family == "gemma3":
        image_tokens = ["<img>", "<start_of_image>", "<end_of_image>"]
        return keras_hub.models.Gemma3Tokenizer(
            proto=char_sentencepiece_proto(image_tokens)
        )
    raise ValueError(
        f"Unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}."
    )


def tiny_backbone(family, vocabulary_size, num_layers=2, hidden_dim=128, num_heads=4,
                  dtype="float32"):
    """A random-init backbone of `family`'s keras-hub class (`dtype`: weights and compute)."""
    head_dim = hidden_dim // num_heads
    common = dict(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_query_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        dtype=dtype,
    )
    if family == "qwen":
        return keras_hub.models.QwenBackbone(**common)
    if family == "qwen3":
        return keras_hub.models.Qwen3Backbone(head_dim=head_dim, **common)
    if family == "gemma":
        return keras_hub.models.GemmaBackbone(head_dim=head_dim, **common)
    if family == "gemma3":
        return keras_hub.models.Gemma3Backbone(
            head_dim=head_dim, image_size=None, **common
        )
    raise ValueError(
        f"Unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}."
    )


_CAUSAL_LM_CLASSES = {
    "qwen": ("QwenCausalLM", "QwenCausalLMPreprocessor"),
    "qwen3": ("Qwen3CausalLM", "Qwen3CausalLMPreprocessor"),
    "gemma": ("GemmaCausalLM", "GemmaCausalLMPreprocessor"),
    "gemma3": ("Gemma3CausalLM", "Gemma3CausalLMPreprocessor"),
}


def tiny_causal_lm(family="qwen", num_layers=2, hidden_dim=128, num_heads=4, seed=0,
                   sequence_length=64, dtype="float32"):
    """A tiny random-init keras-hub CausalLM of `family`, with a tokenizer built here."""
    if family not in _CAUSAL_LM_CLASSES:
        raise ValueError(
            f"Unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}."
        )
    keras.utils.set_random_seed(seed)
    tokenizer = tiny_tokenizer(family)
    backbone = tiny_backbone(
        family, tokenizer.vocabulary_size(), num_layers, hidden_dim, num_heads, dtype
    )
    lm_name, preprocessor_name = _CAUSAL_LM_CLASSES[family]
    preprocessor_cls = getattr(keras_hub.models, preprocessor_name)
    kwargs = {"image_converter": None} if family == "gemma3" else {}
    preprocessor = preprocessor_cls(
        tokenizer=tokenizer, sequence_length=sequence_length, **kwargs
    )
    return getattr(keras_hub.models, lm_name)(backbone=backbone, preprocessor=preprocessor)


def load_causal_lm(preset, dtype="float32"):
    """`keras_hub.models.CausalLM.from_preset(preset)`, with a clear error when it is missing.

    `preset` is a keras-hub preset name ("qwen2.5_0.5b_en", "gemma3_1b", ...), a
    "kaggle://" / "hf://" handle, a local directory written by `save_to_preset`, or a local
    Hugging Face transformers directory (config.json with `model_type`, safetensors,
    tokenizer files), which keras-hub's own converter reads; `hf.check_hf_directory`
    checks it first.
    """
    from pipelines.grpo import hf

    looks_local = os.sep in preset or preset.startswith(".") or os.path.exists(preset)
    if looks_local and not os.path.isdir(preset):
        raise UserError(
            f"Model directory {preset!r} does not exist. Pass a keras-hub preset name "
            "(e.g. 'qwen2.5_0.5b_en'), a directory written by save_to_preset (config.json, "
            "model.weights.h5), or a Hugging Face directory (config.json with model_type, "
            "model.safetensors, tokenizer files)."
        )
    if looks_local:
        config = hf.read_config(preset)
        if config is None:
            raise UserError(
                f"{preset!r} is neither a keras-hub preset nor a Hugging Face directory: it "
                f"has no config.json (it has {_listing(preset)})."
            )
        if isinstance(config, dict) and "model_type" in config:
            hf.check_hf_directory(preset)
        elif not (isinstance(config, dict) and "registered_name" in config):
            raise UserError(
                f"{preset}/config.json is neither keras-hub's (registered_name) nor "
                "transformers' (model_type)."
            )
        elif not (os.path.exists(os.path.join(preset, "model.weights.h5"))
                  or glob.glob(os.path.join(preset, "model_*.weights.h5"))):
            raise UserError(
                f"{preset!r} is a keras-hub preset without weights (it has "
                f"{_listing(preset)}); needed: model.weights.h5, as save_to_preset writes it."
            )
    try:
        return keras_hub.models.CausalLM.from_preset(preset, dtype=dtype)
    except Exception as error:  # keras-hub raises several types for a bad handle
        if looks_local:
            raise UserError(
                f"keras-hub could not load {preset!r} ({type(error).__name__}: "
                f"{' '.join(str(error).split())})."
            ) from error
        known = sorted(keras_hub.models.CausalLM.presets)
        raise UserError(
            f"Could not load keras-hub CausalLM preset {preset!r} ({type(error).__name__}: "
            f"{' '.join(str(error).split())}). Presets need their weights available "
            "(downloaded or cached) or a "
            f"local preset directory. Known preset names include: {', '.join(known[:12])}, ..."
        ) from error


def _listing(directory):
    names = sorted(os.listdir(directory))
    return ", ".join(names) if names else "nothing"


def backbone_class(model):
    """The keras-hub backbone class `model` ("tiny:<family>" or a preset) would build."""
    if model.startswith("tiny:"):
        lm_name = _CAUSAL_LM_CLASSES[model[len("tiny:"):]][0]
        return getattr(keras_hub.models, lm_name).backbone_cls
    from keras_hub.src.utils.preset_utils import get_preset_loader

    try:
        return get_preset_loader(model).check_backbone_class()
    except Exception as error:  # a missing or unreadable preset: the same error as loading it
        load_causal_lm(model)
        raise UserError(f"cannot read the backbone class of preset {model!r} ({error})") from None


def lora_enabled(causal_lm):
    return bool(getattr(causal_lm.backbone, "_lora_enabled_layers", []))


def freeze_all_but_lora(causal_lm):
    """Only the LoRA pairs train. keras-hub's `enable_lora` freezes the backbone but leaves
    the adapted projections' biases (Qwen's query/value biases) trainable; they are frozen
    too, so a checkpoint's LoRA file plus the base model is the whole model."""
    for variable in causal_lm.trainable_variables:
        if "lora_kernel" not in variable.path:
            variable.trainable = False


def enable_lora(causal_lm, rank):
    """Rank-`rank` LoRA pairs on the attention's query and value projections (keras-hub's
    defaults), the only weights that train from now on."""
    if not lora_enabled(causal_lm):
        causal_lm.backbone.enable_lora(rank)
    freeze_all_but_lora(causal_lm)


def merge_lora(causal_lm):
    """Fold each LoRA pair into its kernel, in place: the kernel becomes kernel +
    (alpha / rank) A B and B becomes 0, so the network computes the same function and a
    reader of the plain kernel variable (keras-hub's Hugging Face exporters) sees the
    trained weights."""
    from keras import ops

    for layer in causal_lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            merged = ops.cast(layer.kernel, layer._kernel.dtype)
            layer._kernel.assign(merged)
            # ops.zeros, not zeros_like: JAX cannot read the dtype of a distributed variable
            b = layer.lora_kernel_b
            b.assign(ops.zeros(b.shape, b.dtype))


def network_only(causal_lm):
    """The same network (weights shared) without its preprocessor.

    What an export tracks: a tokenizer inside a SavedModel brings its ops into the graph
    (Gemma's `SentencepieceOp` needs tensorflow-text, which TensorFlow alone and stock TF
    Serving lack), so servables take token ids and clients tokenize.
    """
    return causal_lm.__class__(backbone=causal_lm.backbone, preprocessor=None)
