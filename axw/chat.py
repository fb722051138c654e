"""Chat templates: chat messages -> the prompt text, and ids, a chat model was
trained on.

A chat model's repository holds a Jinja template (`chat_template` in
`tokenizer_config.json`, or transformers' newer `chat_template.jinja`) that
lays a conversation out with the model's own turn markers. transformers'
`PreTrainedTokenizerBase.apply_chat_template` (and `render_jinja_template` in
`transformers/utils/chat_template_utils.py`) is the reference behaviour: the
same sandbox, the same globals and filters, the same variables, so the text is
the same character for character, and its ids are the same.

Templates come from the Hub and are untrusted code: they run in jinja2's
immutable sandbox, which refuses underscore attributes (`''.__class__`) and
unsafe calls, and see only plain JSON-like data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from .hub import read_json

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # transformers' newer home of a template ("default" of several)
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # beside it, the other named templates, as NAME.jinja
# a marker appended to the message `continue_final_message` leaves open, found and cut after rendering
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# names a message's reasoning is passed under; templates read the first (`thinking` for gpt-oss)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# --- the sandbox ---


def raise_exception(message):
    """What a template calls to refuse a conversation (e.g. roles out of order).
    transformers raises jinja2's TemplateError; a ValueError carries the same
    message and is what axw (and the app) report bad input with."""
    raise ValueError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' `tojson` filter: plain `json.dumps` (Jinja's own escapes
    HTML characters and takes fewer options)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    """Today's date in a template (Llama 3.1's "Today Date: ...")."""
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` in a template, without exposing the `dict` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=1)
def _environment():
    """The sandbox transformers renders templates in: immutable (no
    `list.append` on the caller's data), `trim_blocks` and `lstrip_blocks`
    (so `{% ... %}` lines leave no blank lines or indentation), loop controls,
    and the `{% generation %}` tag some templates mark assistant text with."""
    import jinja2
    import jinja2.ext
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body unchanged
        (transformers also records where it lies, for assistant masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names, so a template cannot
        store or reach CPython internals through one (as transformers does)."""

        def __init__(*args, **kwargs):  # Jinja's signature trick, so `namespace(self=...)` works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template cannot store {name!r} on a namespace")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=_TemplateDict(),
                       namespace=Namespace)
    return env


@lru_cache(maxsize=32)
def compile_template(source: str):
    """The compiled template (cached: a chat app renders the same one each turn)."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"the chat template is not valid Jinja (line {e.lineno}): {e.message}") from None


def _render(template, **variables) -> str:
    """Render, reporting a template's failure (an undefined name, an attribute
    the sandbox refuses) as the ValueError axw gives bad input; the
    template's own `raise_exception` is one already."""
    import jinja2

    try:
        return template.render(**variables)
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template failed: {e}") from e


def _plain(value):
    """What a template may see: JSON-like data rebuilt from plain types, so no
    object with methods the sandbox does not know (tensors, images, str
    subclasses) reaches it; anything else becomes an inert "<TypeName>", as in
    transformers' `_plain_template_data`."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models, as the OpenAI SDK returns messages
        return _plain(value.model_dump())
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():  # np.bool_ would read as truthy
        return _plain(value.item())
    return f"<{type(value).__name__}>"


# --- conversations ---


def _messages(conversation) -> list[dict]:
    """A fresh, plain copy of one conversation: keys whose value is None
    dropped (templates handle a missing key, not a literal None), reasoning
    copied under the names templates read (transformers' rules)."""
    if not isinstance(conversation, (list, tuple)):
        raise ValueError(f"a conversation is a list of messages ({{'role': ..., 'content': ...}}), got "
                         f"{type(conversation).__name__}")
    messages = []
    for message in conversation:
        plain = _plain(message)  # message objects (dataclasses, pydantic) become dicts too
        if not isinstance(plain, dict):
            raise ValueError(f"chat messages are dicts with 'role' and 'content', got {message!r}")
        message = {k: v for k, v in plain.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        messages.append(message)
    return messages


def _plain_list(items, name: str):
    """Tools (JSON schemas) or documents, as plain data: a list of dicts, or None."""
    if items is not None and not all(isinstance(item, Mapping) for item in items):
        allowed = {"tools": "JSON schemas (dicts with the function's name, description and parameters)",
                   "documents": "dicts with 'title' and 'text' keys"}[name]
        raise ValueError(f"{name} are {allowed}")
    return _plain(items)


def _render_chat(template, source: str, conversation, continue_final_message: bool | str, variables: dict) -> str:
    """One conversation's text; with `continue_final_message`, cut after the
    final message's text (transformers tags it, renders, and cuts at the tag)."""
    messages = _messages(conversation)
    if not continue_final_message:
        return _render(template, messages=messages, **variables)
    if not messages:
        raise ValueError("continue_final_message is set but the conversation is empty")
    key = continue_final_message if isinstance(continue_final_message, str) else "content"
    final = _open_final_message(messages, source, key)
    return _cut_after_final_message(_render(template, messages=messages, **variables), final)


def _open_final_message(messages: list[dict], source: str, key: str):
    """Tag the final message's text so the rendered chat can be cut right after
    it (`continue_final_message`); returns the untagged text."""
    final = messages[-1].get(key)
    if final is None:
        raise ValueError(f"continue_final_message is set but the final message has no {key!r} to continue")
    keys = [key]
    if key in _REASONING_FIELDS:  # reasoning is copied under several names: tag each copy
        keys = [k for k in _REASONING_FIELDS if messages[-1].get(k) == final]
    if not any(k in source for k in keys):
        raise ValueError(f"continue_final_message is set to {key!r}, a field the chat template never reads")
    if isinstance(final, (list, tuple)):  # content blocks: continue the last text block
        for block in reversed(final):
            if isinstance(block, dict) and "text" in block:
                text, block["text"] = block["text"], block["text"] + _CONTINUE_TAG
                return text
        raise ValueError("continue_final_message is set but the final message has no text to continue")
    for k in keys:
        messages[-1][k] = messages[-1][k] + _CONTINUE_TAG
    return final


def _cut_after_final_message(rendered: str, final: str) -> str:
    """The rendered chat up to the end of the final message's text: what
    follows (its end-of-turn token) is left off so the model continues it."""
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in rendered or tag not in rendered:
        raise ValueError("continue_final_message is set but the chat template dropped part of the final message, "
                         "so it cannot be continued")
    at = rendered.rindex(tag)
    if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()  # the template trimmed the message's trailing space


# --- a model's template ---


def _token_string(value):
    """A special token as tokenizer_config.json writes it: a string, or an
    AddedToken dict with its "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@dataclasses.dataclass
class ChatTemplate:
    """A model's chat template and the special-token strings it may use.

    `template` is the Jinja source, or a dict of named templates ("default",
    "tool_use", ...). `special_tokens` maps names to strings (`bos_token`,
    `eos_token`, ... and model-specific ones such as `eot_token`): the
    variables transformers passes a template as its `special_tokens_map`."""

    template: str | dict[str, str]
    special_tokens: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        templates = self.template if isinstance(self.template, dict) else {"default": self.template}
        if not templates or not all(isinstance(k, str) and isinstance(v, str) for k, v in templates.items()):
            raise ValueError("a chat template is a Jinja string, or a dict of named Jinja strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.special_tokens.items()):
            raise ValueError("special_tokens maps names (bos_token, eos_token, ...) to token strings")

    def source(self, chat_template: str | None = None, tools=None) -> str:
        """The Jinja source to render: `chat_template` (a source, or the name
        of one of a dict's templates), else the model's; of a dict, "tool_use"
        when tools are given and it has one, else "default" (transformers'
        `get_chat_template`)."""
        if isinstance(self.template, dict):
            if chat_template is not None:
                return self.template.get(chat_template, chat_template)
            if tools is not None and "tool_use" in self.template:
                return self.template["tool_use"]
            if "default" in self.template:
                return self.template["default"]
            raise ValueError(f"this model has several chat templates and none is 'default': pass chat_template= "
                             f"one of {sorted(self.template)}")
        return self.template if chat_template is None else chat_template

    def render(self, conversation, tools: list[dict] | None = None, documents: list[dict] | None = None,
               chat_template: str | None = None, add_generation_prompt: bool = False,
               continue_final_message: bool | str = False, **kwargs) -> str | list[str]:
        """The conversation's text, equal to transformers'
        `apply_chat_template(..., tokenize=False)`; a list of conversations
        gives a list of texts. Extra keyword arguments are template variables
        (they win over special tokens of the same name)."""
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("cannot apply a chat template to an empty conversation: give at least one message")
        batched = isinstance(conversation, (list, tuple)) and isinstance(conversation[0], (list, tuple))
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be set: the first "
                             "continues the last message, the second starts a new assistant message")
        source = self.source(chat_template, tools)
        template = compile_template(source)
        variables = dict(_plain({**self.special_tokens, **kwargs}), tools=_plain_list(tools, "tools"),
                         documents=_plain_list(documents, "documents"), add_generation_prompt=add_generation_prompt)
        texts = [_render_chat(template, source, chat, continue_final_message, variables)
                 for chat in (conversation if batched else [conversation])]
        return texts if batched else texts[0]

    # --- files ---

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ChatTemplate | None:
        """The template of a Hub folder, None when it has none. As in
        transformers, template files win: `chat_template.jinja` (the
        "default") and `additional_chat_templates/*.jinja` (named ones); else
        the `chat_template` of `tokenizer_config.json` (a string, or a list of
        {"name", "template"}). The special tokens come from the same config."""
        folder = Path(folder)
        config = read_json(folder / TOKENIZER_CONFIG_NAME)
        template = _template_files(folder) or config.get("chat_template")
        if template is None:
            return None
        if isinstance(template, list):
            if not all(isinstance(t, dict) and {"name", "template"} <= t.keys() for t in template):
                raise ValueError(f"{folder / TOKENIZER_CONFIG_NAME}: a list of chat templates holds "
                                 '{"name": ..., "template": ...} entries')
            template = {t["name"]: t["template"] for t in template}
        try:
            return cls(template, special_tokens(folder, config))
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None

    def save_pretrained(self, folder: str | os.PathLike):
        """Write the template where transformers reads it: a single one as
        `chat_template.jinja`, named ones in `tokenizer_config.json`; the
        special tokens in `tokenizer_config.json` too, so both axw and
        transformers' `AutoTokenizer` render the same text from the folder."""
        folder = Path(folder)
        config = {**self.special_tokens, "tokenizer_class": "PreTrainedTokenizerFast"}
        if isinstance(self.template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.template.items()]
        else:
            (folder / CHAT_TEMPLATE_NAME).write_text(self.template, encoding="utf-8")
        with open(folder / TOKENIZER_CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")


def _template_files(folder: Path) -> str | dict[str, str] | None:
    """The templates of transformers' template files: one string when there
    is only `chat_template.jinja`, else a dict by name."""
    templates = {}
    if (folder / CHAT_TEMPLATE_NAME).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_NAME).read_text(encoding="utf-8")
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for path in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def special_tokens(folder: Path, config: dict) -> dict[str, str]:
    """The special-token strings a template sees, as transformers collects
    them: the named ones (bos_token, ...) and any other `*_token` string of
    `tokenizer_config.json` (eot_token, image_token, ...) or of its
    `extra_special_tokens` dict. A config without `added_tokens_decoder` is
    an old one, whose `special_tokens_map.json` overrides it."""
    values = dict(config)
    if "added_tokens_decoder" not in config:
        values.update(read_json(folder / SPECIAL_TOKENS_MAP_NAME))
    if isinstance(values.get("extra_special_tokens"), dict):
        values.update(values["extra_special_tokens"])
    tokens = {}
    for name, value in values.items():
        token = _token_string(value)
        if token is not None and name.endswith("_token"):
            tokens[name] = token
    return tokens


# --- ids ---


def encode_chat(tokenizer, text: str) -> list[int]:
    """Ids of a rendered chat. The template writes every special token itself
    (the BOS included), so the tokenizer's post-processor adds none: with
    transformers' rule (`add_special_tokens=False` in the tokenizer's
    `apply_chat_template`) a template that starts with the BOS never gets a
    second one. Special tokens in the text are the tokenizer's added tokens,
    matched whole."""
    return tokenizer.encode(text, add_special_tokens=False).ids


# transformers' tokenizer-side arguments axw does not offer; anything else a call
# passes by name is a template variable, so these must not silently become one
NOT_OFFERED = ("sanitize_control_tokens", "padding", "truncation", "max_length", "tokenizer_kwargs",
               "return_assistant_tokens_mask")


def drop_unused_arguments(kwargs: dict) -> dict:
    """The keyword arguments without transformers' tokenizer-side ones left
    at their off values (False, None, {}); one that asks for something is a
    ValueError."""
    asked = [name for name in NOT_OFFERED if kwargs.get(name) not in (None, False, {})]
    if asked:
        raise ValueError(f"apply_chat_template does not offer {', '.join(asked)} (transformers' tokenizer options); "
                         "the ids come unpadded and untruncated")
    return {k: v for k, v in kwargs.items() if k not in NOT_OFFERED}


def apply_chat_template(template: ChatTemplate | None, tokenizer, owner: str, conversation, tools=None,
                        documents=None, chat_template: str | None = None, add_generation_prompt: bool = False,
                        continue_final_message: bool | str = False, tokenize: bool = True,
                        return_tensors: str | None = None, return_dict: bool = False, **kwargs):
    """transformers' `apply_chat_template` with a model's or a tokenizer's (`owner`) `template` and `tokenizer`:
    the text, or its ids (see `AutoregressiveWrapper.apply_chat_template`)."""
    kwargs = drop_unused_arguments(kwargs)
    if template is None:
        if chat_template is None:
            raise ValueError(f"this {owner} has no chat template (none in its tokenizer_config.json, no "
                             f"chat_template.jinja): pass chat_template= a Jinja template, or set "
                             f"{owner}.chat_template = axw.chat.ChatTemplate(...)")
        template = ChatTemplate(chat_template)
    text = template.render(conversation, tools=tools, documents=documents, chat_template=chat_template,
                           add_generation_prompt=add_generation_prompt,
                           continue_final_message=continue_final_message, **kwargs)
    if not tokenize:
        return text
    if tokenizer is None:
        raise ValueError(f"this {owner} has no tokenizer to turn the chat into ids: pass tokenize=False for the text")
    return chat_ids(tokenizer, text, return_tensors=return_tensors, return_dict=return_dict)


def chat_ids(tokenizer, text: str | list[str], return_tensors: str | None = None, return_dict: bool = False):
    """The ids of one rendered chat (a list) or of several (a list of lists);
    `return_tensors="pt"` gives a (batch, n) tensor, one row for one chat, as
    transformers does; `return_dict=True` gives them with their attention
    mask, as `{"input_ids", "attention_mask"}`."""
    if return_tensors not in (None, "pt"):
        raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
    batched = isinstance(text, list)
    ids = [encode_chat(tokenizer, t) for t in (text if batched else [text])]
    if return_tensors == "pt":
        if len({len(row) for row in ids}) > 1:
            raise ValueError("the conversations have different lengths, so they make no tensor: take the ids as "
                             "lists (generate left-pads a list of 1-D prompts)")
        import torch

        ids = torch.tensor(ids, dtype=torch.long)
    elif not batched:
        ids = ids[0]
    if not return_dict:
        return ids
    if return_tensors == "pt":
        return {"input_ids": ids, "attention_mask": ids.new_ones(ids.shape)}
    mask = [[1] * len(row) for row in ids] if batched else [1] * len(ids)
    return {"input_ids": ids, "attention_mask": mask}


def stop_token_ids(folder: Path, config: dict, tokenizer, num_tokens: int) -> list[int]:
    """The ids a chat reply ends at, in order, each once: `eos_token_id` of
    `generation_config.json` and of `config.json` (an id or a list: Llama 3
    instruct models list three), then the `eos_token` and end-of-turn
    `eot_token` strings of `tokenizer_config.json` looked up in the tokenizer.
    Ids outside the vocabulary are left out (the model never produces them)."""
    ids = []
    for source in (read_json(folder / "generation_config.json"), config):
        value = source.get("eos_token_id")
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int) and not isinstance(i, bool):
                ids.append(i)
    tokens = special_tokens(folder, read_json(folder / TOKENIZER_CONFIG_NAME))
    if tokenizer is not None:
        for name in ("eos_token", "eot_token"):
            if name in tokens:
                ids.append(tokenizer.token_to_id(tokens[name]))
    return list(dict.fromkeys(i for i in ids if i is not None and 0 <= i < num_tokens))
