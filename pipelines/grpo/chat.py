"""Chat messages to prompt text, with a checkpoint's own chat template, as transformers does it.

A prompt given as chat messages (`tasks.Problem.messages`: (role, content) pairs, the
system prompt included) becomes text through a Jinja chat template, rendered the way
transformers' `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`
renders it: a sandboxed (immutable) Jinja environment with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not escape
HTML, `raise_exception`, `strftime_now`, and as variables `messages`, `tools` and
`documents` (None), `add_generation_prompt=True` and the tokenizer's named special tokens
(`bos_token`, `eos_token`, ...).

`--chat-template` (`GRPOConfig.chat_template`) picks the template:

- "auto": the checkpoint's own, when `--model` is a transformers directory that has one
  (chat_template.jinja, or `chat_template` in tokenizer_config.json) and a prompt is
  messages; prompts stay as the data gives them otherwise;
- "none": no template (a prompt of messages is what the task loader made of it);
- a file: that Jinja template, for every prompt given as messages.

Templates that start with `{{ bos_token }}` (Llama 3, Gemma) put the start token in the
text; keras-hub's preprocessor adds it as a token too, so the rendered text's leading
start token is dropped before tokenizing and the prompt gets it once, as transformers'
tokenized `apply_chat_template` (which adds no special tokens) gives it.
"""

import dataclasses
import datetime
import json
import pathlib

from pipelines.common.errors import UserError

SETTINGS = ("auto", "none")

# transformers' named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`), passed to templates.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                  "cls_token", "mask_token")


def read_template(directory):
    """The chat template a transformers directory carries, or None.

    chat_template.jinja (transformers 5 writes it) wins over `chat_template` in
    tokenizer_config.json (a string, or a list of named templates: the "default" one).
    """
    directory = pathlib.Path(directory)
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    template = _tokenizer_config(directory).get("chat_template")
    if template is None and (directory / "chat_template.json").is_file():
        template = json.loads((directory / "chat_template.json").read_text()).get(
            "chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def set_template(directory, template):
    """Make `template` the chat template of a transformers directory."""
    directory = pathlib.Path(directory)
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    config = _tokenizer_config(directory)
    if "chat_template" in config:  # the file wins, but two differing copies mislead
        config["chat_template"] = template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _tokenizer_config(directory):
    path = pathlib.Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}).") from None


def _token_text(value):
    if isinstance(value, dict):  # a serialised AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(directory=None, tokenizer=None):
    """{"bos_token": "<|begin_of_text|>", ...}: from a transformers directory's
    tokenizer_config.json (special_tokens_map.json fills gaps), else from a keras-hub
    tokenizer's start and end tokens."""
    found = {}
    if directory is not None:
        directory = pathlib.Path(directory)
        sources = [_tokenizer_config(directory)]
        if (directory / "special_tokens_map.json").is_file():
            sources.append(json.loads((directory / "special_tokens_map.json").read_text()))
        for source in sources:
            for name in SPECIAL_TOKENS:
                text = _token_text(source.get(name))
                if text is not None:
                    found.setdefault(name, text)
    elif tokenizer is not None:
        for name, attribute in (("bos_token", "start_token"), ("eos_token", "end_token"),
                                ("pad_token", "pad_token")):
            text = getattr(tokenizer, attribute, None)
            if isinstance(text, str):
                found[name] = text
    return found


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers): the body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, text, tokens, origin):
        import jinja2

        self.text = text
        self.tokens = dict(tokens)
        self.origin = origin
        try:
            self._template = _environment().from_string(text)
        except jinja2.exceptions.TemplateSyntaxError as error:
            raise UserError(f"the chat template of {origin} is not valid Jinja "
                            f"(line {error.lineno}: {error.message}).") from None

    def render(self, messages):
        """The prompt text of `messages` ((role, content) pairs), generation prompt added."""
        import jinja2

        chat = [{"role": role, "content": content} for role, content in messages]
        try:
            return self._template.render(messages=chat, tools=None, documents=None,
                                         add_generation_prompt=True, **self.tokens)
        except jinja2.exceptions.TemplateError as error:
            roles = "/".join(role for role, _ in messages)
            raise UserError(f"the chat template of {self.origin} refused a prompt of "
                            f"{roles} messages: {error}.") from None


def resolve(setting, model, tokenizer=None):
    """The ChatTemplate that `--chat-template setting` picks for `--model model`, or None."""
    from pipelines.grpo.hf import is_hf_directory

    hf = is_hf_directory(model) if not model.startswith("tiny:") else False
    tokens = special_tokens(model) if hf else special_tokens(tokenizer=tokenizer)
    if setting == "none":
        return None
    if setting == "auto":
        text = read_template(model) if hf else None
        return ChatTemplate(text, tokens, model) if text is not None else None
    path = pathlib.Path(setting)
    if not path.is_file():
        raise UserError(f"--chat-template must be auto, none or a Jinja template file "
                        f"(got {setting!r}, which is not a file).")
    return ChatTemplate(path.read_text(encoding="utf-8"), tokens, str(path))


def render_problems(problems, template, causal_lm):
    """`problems` with each prompt given as messages rendered by `template` (None: as is).

    The rendered text's leading start token is dropped where keras-hub's preprocessor adds
    that token itself (see the module docstring).
    """
    if template is None:
        return list(problems)
    preprocessor = causal_lm.preprocessor
    start = template.tokens.get("bos_token")
    if not (start and getattr(preprocessor, "add_start_token", False)):
        start = None
    rendered = []
    for problem in problems:
        messages = getattr(problem, "messages", None)
        if messages is None:
            rendered.append(problem)
            continue
        text = template.render(messages)
        if start and text.startswith(start):
            text = text[len(start):]
        rendered.append(dataclasses.replace(problem, prompt=text))
    return rendered


def render_chat_prompts(config, causal_lm, *problem_lists):
    """Each list of problems with its chat prompts rendered as `config.chat_template` says
    (for `config.model`'s checkpoint); one list back per list given."""
    template = resolve(config.chat_template, config.model, causal_lm.preprocessor.tokenizer)
    return tuple(render_problems(problems, template, causal_lm) for problems in problem_lists)
