"""Hugging Face transformers directories: checked before keras-hub reads one, written after a run.

In: `keras_hub.models.CausalLM.from_preset(dir)` converts a transformers directory itself
(a config.json with `model_type` routes it to keras-hub's converter for that family);
this module only checks first that the directory has what that converter reads, so a
missing file is one line naming what is there and what is needed instead of a traceback
from deep inside the converter:

- config.json with a `model_type` of a family in `FAMILIES`;
- weights as safetensors: model.safetensors, or model.safetensors.index.json and every
  shard its weight map names (keras-hub reads no pytorch_model.bin);
- the tokenizer files the family's converter reads (`FAMILIES[model_type].tokenizer`).

Out: `export_hf_dir` writes the policy with keras-hub's `CausalLM.export_to_transformers`
(config.json, model.safetensors, tokenizer files) for the backbones keras-hub 0.32 can
write (`exportable`: not Qwen3, and of Gemma only the multi-query models like Gemma 2B,
since keras-hub's Gemma exporter writes one key/value head). A LoRA policy is merged
first (`models.merge_lora`: several exporters read the kernel variable, which holds the
base weights until then). When the run started from a transformers directory, that
directory's tokenizer files (tokenizer.json, tokenizer_config.json with its chat template,
tokenizer.model, generation_config.json, ...) replace the ones keras-hub regenerates, and
config.json keeps the source's fields that keras-hub does not write (`architectures`,
`max_position_embeddings`, ...); the fields keras-hub writes describe the weights and win,
and `dtype` is the policy's weight dtype.
"""

import collections
import json
import pathlib
import shutil
import sys

from pipelines.common.errors import UserError

Family = collections.namedtuple("Family", "name tokenizer")

# model_type -> (family name, tokenizer files keras-hub's converter reads: any one group).
FAMILIES = {
    "qwen2": Family("Qwen2 / Qwen2.5", [("tokenizer.json",)]),
    "qwen3": Family("Qwen3", [("tokenizer.json",)]),
    "llama": Family("Llama 3", [("tokenizer.json", "tokenizer_config.json")]),
    "gemma": Family("Gemma", [("tokenizer.model",)]),
    "gemma3_text": Family("Gemma 3 (text)", [("tokenizer.model",), ("tokenizer.json",)]),
    "gemma3": Family("Gemma 3", [("tokenizer.model",), ("tokenizer.json",)]),
}

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

# Files of a transformers directory that describe its tokenizer and generation, carried
# from the checkpoint a run started from into its exported directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


def read_config(directory):
    """The parsed config.json of `directory`, or None when it has none."""
    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}).") from None


def is_hf_directory(directory):
    """A local directory whose config.json has `model_type` (transformers' layout)."""
    config = read_config(directory) if pathlib.Path(directory).is_dir() else None
    return isinstance(config, dict) and "model_type" in config


def _listing(directory):
    names = sorted(p.name for p in pathlib.Path(directory).iterdir())
    return ", ".join(names) if names else "nothing"


def check_hf_directory(directory):
    """Raise a one-line UserError unless keras-hub can convert `directory`; returns its
    model_type."""
    directory = pathlib.Path(directory)
    config = read_config(directory)
    model_type = config.get("model_type")
    there = f"it has {_listing(directory)}"
    if model_type not in FAMILIES:
        known = ", ".join(f"{name} ({key})" for key, (name, _) in FAMILIES.items())
        raise UserError(
            f"{directory} is a Hugging Face checkpoint of model_type {model_type!r}, which "
            f"GRPO does not load; supported model types: {known}.")
    family = FAMILIES[model_type]
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            raise UserError(f"{index} has no readable weight_map ({error}).") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise UserError(
                f"{directory}: {WEIGHTS_INDEX} names {len(shards)} weight shards but "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; "
                f"{there}.")
    elif not (directory / WEIGHTS).is_file():
        raise UserError(
            f"{directory} has no safetensors weights ({there}); needed: {WEIGHTS}, or "
            f"{WEIGHTS_INDEX} with its shards (a pytorch_model.bin can be rewritten with "
            "transformers' save_pretrained(dir), which writes safetensors).")
    if not any(all((directory / f).is_file() for f in group) for group in family.tokenizer):
        needed = " or ".join(" + ".join(group) for group in family.tokenizer)
        raise UserError(
            f"{directory} has no tokenizer files for a {family.name} checkpoint ({there}); "
            f"needed: {needed} (as the checkpoint ships them).")
    return model_type


def exportable(causal_lm):
    """(True, "") when keras-hub can write `causal_lm` as a transformers directory, else
    (False, the reason in one line)."""
    from keras_hub.src.utils.transformers.export.hf_exporter import MODEL_CONFIGS

    backbone = causal_lm.backbone
    name = type(backbone).__name__
    if name == "GemmaBackbone" and backbone.num_key_value_heads != 1:
        # Its Gemma exporter writes the first key/value head only (Gemma 2B's multi-query
        # attention): a model with more would be written wrong.
        return False, (f"keras-hub's Gemma exporter writes one key/value head and this "
                       f"Gemma has {backbone.num_key_value_heads} (only Gemma 2B-style "
                       "multi-query models export)")
    if name in MODEL_CONFIGS:
        return True, ""
    writable = ", ".join(sorted(n.removesuffix("Backbone") for n in MODEL_CONFIGS))
    return False, (f"keras-hub cannot write a {name} as a Hugging Face directory "
                   f"(CausalLM.export_to_transformers supports {writable})")


def export_hf_dir(causal_lm, target, source=None, chat_template=None):
    """Write `causal_lm` as a transformers directory at `target`; returns the path.

    `source`: the transformers directory the run started from (its tokenizer files and
    extra config fields are carried over), or None. `chat_template`: a template file the
    run used instead of the checkpoint's own (written as chat_template.jinja).
    Written via `<target>.partial`, so a kill never leaves half a directory.
    """
    from pipelines.grpo.models import lora_enabled, merge_lora

    ok, reason = exportable(causal_lm)
    if not ok:
        raise UserError(reason + ".")
    if lora_enabled(causal_lm):
        merge_lora(causal_lm)  # several exporters read the kernel variable, not A B
    target = pathlib.Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    causal_lm.export_to_transformers(str(partial))
    if source is not None and is_hf_directory(source):
        source = pathlib.Path(source)
        written = json.loads((partial / "config.json").read_text())
        merged = {**read_config(source), **written}
        merged.pop("auto_map", None)  # remote code is not carried along
        # The weights are written in the policy's variable dtype, whatever the source was.
        merged.pop("torch_dtype", None)
        merged["dtype"] = causal_lm.backbone.dtype_policy.variable_dtype
        (partial / "config.json").write_text(json.dumps(merged, indent=2))
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, partial / name)
    if chat_template is not None:
        from pipelines.grpo.chat import set_template

        set_template(partial, pathlib.Path(chat_template).read_text(encoding="utf-8"))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def export_run_hf_dir(causal_lm, config, target):
    """A finished run's Hugging Face directory: {"hf_dir": path}, or {} with one warning
    line when keras-hub cannot write the family (the preset and SavedModels still are)."""
    ok, reason = exportable(causal_lm)
    if not ok:
        print(f"warning: no Hugging Face export: {reason}; the keras-hub preset and the "
              "SavedModels are written.", file=sys.stderr)
        return {}
    source = config.model if is_hf_directory(config.model) else None
    template = None if config.chat_template in ("auto", "none") else config.chat_template
    return {"hf_dir": export_hf_dir(causal_lm, target, source=source, chat_template=template)}
