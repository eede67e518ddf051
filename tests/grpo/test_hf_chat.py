"""Chat templates: a checkpoint's own template renders prompts byte for byte as transformers does.

The tiny checkpoints carry the real templates of Qwen2.5-Instruct, Meta-Llama-3-Instruct
and Gemma-IT in tokenizer_config.json (tests/grpo/chat_templates/); transformers'
`apply_chat_template(..., tokenize=False, add_generation_prompt=True)` on the tokenizer
saved there is the reference.
"""

import dataclasses

import numpy as np
import pytest

from pipelines.common.errors import UserError
from pipelines.grpo import chat
from tests.grpo.hf_checkpoints import chat_template, write_checkpoint

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CONVERSATIONS = {
    "system and user": [("system", SYSTEM), ("user", "What is 12+30?")],
    "user only": [("user", "  What is 7*6?\n")],
    "several turns": [("user", "What is 2+3?"), ("assistant", "2+3=5"),
                      ("user", "And 5*4? Say <b>it</b> & {{ not a tag }} — ünïcode")],
}
SYSTEM_REFUSED = {"gemma"}  # Gemma-IT's template raises on a system turn (tested below)


@dataclasses.dataclass(frozen=True)
class Prompt:  # the two fields of tasks.Problem that rendering reads and writes
    prompt: str
    messages: tuple | None = None


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    made = {}
    for family in ("qwen2", "llama3", "gemma"):
        directory = tmp_path_factory.mktemp(f"chat_{family}")
        write_checkpoint(family, directory)
        made[family] = directory
    return made


def transformers_render(directory, messages, tokenize=False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    out = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                        tokenize=tokenize, add_generation_prompt=True)
    if tokenize and not isinstance(out, list):
        out = out["input_ids"]
    return out


@pytest.mark.parametrize("family, name", [
    (family, name) for family in ("qwen2", "llama3", "gemma") for name in sorted(CONVERSATIONS)
    if not (family in SYSTEM_REFUSED and CONVERSATIONS[name][0][0] == "system")])
def test_rendering_is_byte_identical_to_transformers(directories, family, name):
    messages = CONVERSATIONS[name]
    template = chat.resolve("auto", str(directories[family]))
    assert template is not None and template.text == chat_template(family)
    ours = template.render(messages)
    assert ours == transformers_render(directories[family], messages)
    if messages[0][0] == "system":
        assert SYSTEM in ours  # the system prompt is kept


def test_a_template_that_refuses_a_prompt_is_one_line(directories):
    template = chat.resolve("auto", str(directories["gemma"]))
    with pytest.raises(UserError) as raised:
        template.render(CONVERSATIONS["system and user"])
    message = str(raised.value)
    assert "System role not supported" in message and "\n" not in message
    with pytest.raises(Exception, match="System role not supported"):  # transformers too
        transformers_render(directories["gemma"], CONVERSATIONS["system and user"])


@pytest.mark.parametrize("family", ["qwen2", "llama3", "gemma"])
def test_rendered_prompts_tokenize_to_transformers_ids(directories, family):
    """Through keras-hub's preprocessor, a rendered prompt is the token ids transformers'
    tokenized apply_chat_template gives: the start token once (Llama 3, Gemma)."""
    from pipelines.grpo.models import load_causal_lm

    causal_lm = load_causal_lm(str(directories[family]))
    template = chat.resolve("auto", str(directories[family]))
    messages = CONVERSATIONS["several turns"]
    [problem] = chat.render_problems([Prompt("plain", tuple(messages))], template, causal_lm)
    encoded = causal_lm.preprocessor.generate_preprocess([problem.prompt],
                                                         sequence_length=256)
    mask = np.asarray(encoded["padding_mask"])[0].astype(bool)
    ours = np.asarray(encoded["token_ids"])[0][mask].tolist()
    assert ours == list(transformers_render(directories[family], messages, tokenize=True))


def test_settings_pick_the_template(directories, tmp_path):
    qwen = str(directories["qwen2"])
    assert chat.resolve("none", qwen) is None
    assert chat.resolve("auto", "tiny:qwen") is None  # no checkpoint, no template
    custom = tmp_path / "plain.jinja"
    custom.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant:{% endif %}")
    rendered = chat.resolve(str(custom), qwen).render([("system", "S"), ("user", "U")])
    assert rendered == "system: S\nuser: U\nassistant:"
    with pytest.raises(UserError, match="auto, none or a Jinja template file"):
        chat.resolve(str(tmp_path / "missing.jinja"), qwen)


def test_plain_prompts_stay_as_they_are(directories):
    from pipelines.grpo.models import load_causal_lm

    causal_lm = load_causal_lm(str(directories["qwen2"]))
    template = chat.resolve("auto", str(directories["qwen2"]))
    problems = [Prompt("12+30="), Prompt("x", (("user", "12+30?"),))]
    plain, rendered = chat.render_problems(problems, template, causal_lm)
    assert plain == problems[0]
    assert rendered.prompt.startswith("<|im_start|>system\n")
    assert rendered.prompt.endswith("<|im_start|>assistant\n")
    assert chat.render_problems(problems, None, causal_lm) == problems


def test_template_file_of_transformers_5_is_read(tmp_path):
    """transformers 5's save_pretrained writes chat_template.jinja; it wins over the copy in
    tokenizer_config.json."""
    write_checkpoint("qwen2", tmp_path)
    chat.set_template(tmp_path, "{{ messages[0].content }}!")
    assert chat.read_template(tmp_path) == "{{ messages[0].content }}!"
    assert chat.resolve("auto", str(tmp_path)).render([("user", "hi")]) == "hi!"
