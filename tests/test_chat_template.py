"""Chat templates against transformers' `apply_chat_template`: the same text,
character for character, and the same ids, on templates written in the styles
of today's chat families; refusals, the sandbox, and the Hub round trip."""

import json
import shutil
from datetime import datetime
from pathlib import Path

import jinja2
import pytest
import torch
from conftest import tiny_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from axw import AutoregressiveWrapper
from axw.chat import ChatTemplate, stop_token_ids

transformers = pytest.importorskip("transformers")

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>", "<|eom_id|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<s>", "</s>"]

# ChatML, as SmolLM2 writes it (a default system turn when none is given)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 instruct: headers, <|eot_id|>, the BOS written by the template
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Gemma: <start_of_turn> turns, "model" for the assistant, the system text folded into the first user turn
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
    "'\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Mistral's [INST]: refuses a system turn and roles out of order with raise_exception
INST = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Llama 3.1 with tools: a multi-line template (trim_blocks and lstrip_blocks matter), strftime_now, tojson
LLAMA31_TOOLS = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You have access to the following functions.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{%- if documents is defined and documents is not none %}
    {% for d in documents %}
    Document {{ loop.index }}: {{ d.title }}
      {{ d.text }}
    {% endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
        {%- set call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {{- '{"name": "' + call.name + '", "parameters": ' + call.arguments | tojson(separators=(",", ":"), sort_keys=true) + '}' }}
        {{- "<|eom_id|>" }}
    {%- elif message.role == 'tool' %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {{- message.content | tojson(ensure_ascii=true) }}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# ChatML with reasoning and tools, as Qwen3 lays it out: namespace, loop controls, dict, the {% generation %} tag
QWEN3 = """{%- set ns = namespace(last_user=-1, tool_turns=0) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages[::-1] %}
    {%- if message.role != 'tool' %}
        {%- break %}
    {%- endif %}
    {%- set ns.tool_turns = ns.tool_turns + 1 %}
{%- endfor %}
{%- if messages[0].role == 'system' or tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content }}
    {%- endif %}
    {%- if tools %}
        {{- '\n\n# Tools\n<tools>' }}
        {%- for tool in tools %}
            {{- '\n' + tool | tojson }}
        {%- endfor %}
        {{- '\n</tools>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- continue %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- if loop.index0 > ns.last_user and message.reasoning_content is defined %}
            {{- '<think>\n' + message.reasoning_content.strip() + '\n</think>\n\n' }}
        {%- endif %}
        {% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}
        {{- '\n' }}
    {%- else %}
        {%- set meta = dict(role=message.role, tools=ns.tool_turns) %}
        {{- '<|im_start|>' + meta.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

# (template, its tokenizer_config.json special tokens, as the families write them: strings or AddedToken dicts)
FAMILIES = {
    "chatml": (CHATML, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "gemma": (GEMMA, {"bos_token": {"__type": "AddedToken", "content": "<bos>", "lstrip": False, "normalized": False,
                                    "rstrip": False, "single_word": False, "special": True},
                      "eos_token": "<eos>", "pad_token": "<pad>", "eot_token": "<end_of_turn>"}),
    "inst": (INST, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "llama31_tools": (LLAMA31_TOOLS, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "qwen3": (QWEN3, {"bos_token": None, "eos_token": "<|im_end|>"}),
}

TEXT = ("Bonjour! Quelle est la capitale de la France? The capital of France is Paris, a city on the Seine. "
        "Tell me more about tokens, turns and templates. naïve café, 東京, emoji 🙂\n  indented line\n")

SYSTEM = {"role": "system", "content": "You are terse.  "}
CHAT = [
    {"role": "user", "content": "  What is the capital of France?\n"},
    {"role": "assistant", "content": "Paris. <not a special token>"},
    {"role": "user", "content": "And of Japan? 東京? naïve 🙂"},
]


def bpe_tokenizer() -> Tokenizer:
    """A small byte-level BPE with the families' special tokens added, and a
    post-processor that prepends <|begin_of_text|> (as Llama 3's does), which a
    chat's ids must never get twice."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL + ["<pad>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT * 4], trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def write_family(folder, name, tokenizer, with_model=True):
    """A Hub folder holding the family's template in its tokenizer_config.json:
    a tiny axw model, tokenizer.json, tokenizer_config.json."""
    template, tokens = FAMILIES[name]
    if with_model:
        model = tiny_model(num_tokens=tokenizer.get_vocab_size(), max_seq_len=256)
        model.tokenizer = tokenizer
        model.save_pretrained(folder)
    else:
        folder.mkdir(parents=True)
        tokenizer.save(str(folder / "tokenizer.json"))
    config = {k: v for k, v in tokens.items() if v is not None}
    config.update(chat_template=template, tokenizer_class="PreTrainedTokenizerFast")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tokenizer = bpe_tokenizer()
    return {name: write_family(root / name, name, tokenizer) for name in FAMILIES}


@pytest.fixture(scope="module")
def loaded(family_folders):
    """Each family loaded both ways: (axw model, transformers tokenizer)."""
    from transformers import AutoTokenizer

    return {name: (AutoregressiveWrapper.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder)))
            for name, folder in family_folders.items()}


def both(model, hf, messages, refusals=False, **kwargs):
    """(axw's result, transformers' result) of the same call; with `refusals`, a refusal is compared as
    ("raised", its message)."""
    def call(fn, **extra):
        try:
            return fn(messages, **kwargs, **extra)
        except Exception as e:
            if not refusals:
                raise
            return ("raised", str(e))
    hf_kwargs = {"return_dict": False} if kwargs.get("tokenize", True) else {}
    return call(model.apply_chat_template), call(hf.apply_chat_template, **hf_kwargs)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_text_and_ids_equal_transformers(loaded, name, system, add_generation_prompt):
    model, hf = loaded[name]
    messages = [SYSTEM, *CHAT] if system else CHAT
    text, hf_text = both(model, hf, messages, True, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids, hf_ids = both(model, hf, messages, True, add_generation_prompt=add_generation_prompt)
    assert text == hf_text
    assert ids == hf_ids
    if name == "inst" and system:  # this family refuses a system turn, in both
        assert text == ("raised", "Conversation roles must alternate user/assistant/user/assistant/...")
        return
    assert isinstance(text, str) and text.endswith(("assistant\n", "model\n", "<|end_header_id|>\n\n")) == (
        add_generation_prompt and name != "inst")
    # special tokens are single ids; a template that writes the BOS gets exactly one
    bos = FAMILIES[name][1].get("bos_token")
    bos = bos["content"] if isinstance(bos, dict) else bos
    if bos is not None:
        assert text.startswith(bos) and ids[0] == model.tokenizer.token_to_id(bos)
        assert ids.count(ids[0]) == 1
    else:
        assert model.tokenizer.token_to_id("<|begin_of_text|>") not in ids
    for token in SPECIAL:
        assert ids.count(model.tokenizer.token_to_id(token)) == text.count(token), token


def test_return_tensors_and_dict_equal_transformers(loaded):
    model, hf = loaded["llama3"]
    ids = model.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt")
    hf_ids = hf.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    assert ids.shape == hf_ids.shape == (1, hf_ids.shape[1]) and torch.equal(ids, hf_ids)
    out = model.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)
    hf_out = hf.apply_chat_template(CHAT, add_generation_prompt=True)
    assert out["input_ids"] == hf_out["input_ids"] and out["attention_mask"] == hf_out["attention_mask"]
    # the ids are a prompt generate takes as it is
    assert model.generate(ids, 3, temperature=0.0).shape == (1, ids.shape[1] + 3)


def test_batch_and_continue_final_message_equal_transformers(loaded):
    model, hf = loaded["chatml"]
    batch = [CHAT, [SYSTEM, *CHAT[:1]]]
    for tokenize in (False, True):
        rows, hf_rows = both(model, hf, batch, add_generation_prompt=True, tokenize=tokenize)
        assert rows == hf_rows and len(rows) == 2
    prefill = [*CHAT, {"role": "assistant", "content": "Tokyo, "}]
    text, hf_text = both(model, hf, prefill, continue_final_message=True, tokenize=False)
    assert text == hf_text and text.endswith("<|im_start|>assistant\nTokyo, ")
    with pytest.raises(ValueError, match="cannot both be set"):
        model.apply_chat_template(prefill, continue_final_message=True, add_generation_prompt=True)


def test_reasoning_and_template_switches_equal_transformers(loaded):
    """Qwen3's way: the reasoning of the turn after the last user message is shown, `enable_thinking=False`
    writes an empty think block; the {% generation %} tag renders its body."""
    model, hf = loaded["qwen3"]
    answered = [*CHAT, {"role": "assistant", "content": "東京.", "reasoning_content": "  Japan's capital.\n"}]
    tools = [{"name": "search", "parameters": {"q": "string"}}]
    for messages, kwargs in ((answered, {}), (CHAT, dict(enable_thinking=False, add_generation_prompt=True)),
                             (answered, dict(tools=tools)), (answered, dict(continue_final_message=True))):
        for tokenize in (False, True):
            a, b = both(model, hf, messages, tokenize=tokenize, **kwargs)
            assert a == b
    text = model.apply_chat_template(answered, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n<think>\nJapan's capital.\n</think>\n\n東京.<|im_end|>\n")
    assert model.apply_chat_template(CHAT, enable_thinking=False, add_generation_prompt=True,
                                     tokenize=False).endswith("<think>\n\n</think>\n\n")


def test_tools_documents_and_template_variables_equal_transformers(loaded):
    model, hf = loaded["llama31_tools"]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, °C",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    documents = [{"title": "Tokyo", "text": "Capital of Japan."}, {"title": "Paris", "text": "Capital of France."}]
    messages = [*CHAT, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Tōkyō", "units": "C"}}}]},
        {"role": "tool", "content": "晴れ 21°C"}]
    for kwargs in (dict(tools=tools, documents=documents), dict(tools=tools, date_string="26 Jul 2024")):
        for tokenize in (False, True):
            a, b = both(model, hf, messages, add_generation_prompt=True, tokenize=tokenize, **kwargs)
            assert a == b
    text = model.apply_chat_template(messages, tools=tools, tokenize=False, date_string="26 Jul 2024")
    assert '    "type": "function"' in text and '{"city":"Tōkyō","units":"C"}' in text  # indent, separators
    assert '"\\u6674\\u308c 21\\u00b0C"' in text and "Today Date: 26 Jul 2024" in text  # ensure_ascii


def test_message_objects_and_rich_values_equal_transformers(loaded):
    """Messages as dataclasses, a None field dropped, str subclasses, numpy scalars and a tensor reach the
    template as transformers hands them over: plain data, the tensor as an inert "<Tensor>"."""
    import dataclasses
    import enum

    import numpy as np

    class Role(str, enum.Enum):
        USER = "user"

    @dataclasses.dataclass
    class Message:
        role: str
        content: object
        tool_calls: object = None

    model, hf = loaded["chatml"]
    template = ("{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.tool_calls is defined }}|"
                "{{ m.flag if m.flag is defined }}{% endfor %}")
    messages = [Message("user", "hi"), {"role": Role.USER, "content": [{"type": "image", "image": torch.zeros(2)},
                                                                        {"type": "text", "text": "what?"}],
                                        "flag": np.bool_(False), "tool_calls": None},
                {"role": "assistant", "content": np.float32(0.5), "flag": np.int64(3)}]
    text, hf_text = both(model, hf, messages, chat_template=template, tokenize=False)
    assert text == hf_text
    assert text == ("user:hi|False|user:[{'type': 'image', 'image': '<Tensor>'}, {'type': 'text', 'text': 'what?'}]"
                    "|False|Falseassistant:0.5|False|3")


def test_transformers_tokenizer_options_are_refused_not_passed_to_the_template(loaded):
    model, _ = loaded["chatml"]
    template = "{{ padding is defined }}"
    assert model.apply_chat_template(CHAT, chat_template=template, padding=False, truncation=False,
                                     tokenize=False) == "False"
    with pytest.raises(ValueError, match="does not offer padding"):
        model.apply_chat_template(CHAT, padding="max_length", max_length=10)
    with pytest.raises(ValueError, match="does not offer sanitize_control_tokens"):
        model.apply_chat_template(CHAT, sanitize_control_tokens=True)


def test_strftime_now_is_today(loaded):
    model, hf = loaded["llama31_tools"]
    before = datetime.now().strftime("%d %b %Y")
    text = model.apply_chat_template(CHAT, tokenize=False)
    hf_text = hf.apply_chat_template(CHAT, tokenize=False)
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}" in text or f"Today Date: {after}" in text
    assert text == hf_text or before != after  # equal unless the day changed in between


def test_raise_exception_is_a_value_error_with_the_templates_message(loaded):
    model, hf = loaded["gemma"]
    bad = [CHAT[0], CHAT[0]]
    with pytest.raises(ValueError, match=r"^Conversation roles must alternate user/assistant/user/assistant/\.\.\.$"):
        model.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="Conversation roles must alternate"):
        hf.apply_chat_template(bad, tokenize=False)


def test_a_model_with_no_template_says_so(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="has no chat template"):
        model.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    # a template given to the call is used, as in transformers
    assert model.apply_chat_template(CHAT[:1], chat_template="{{ messages[0].content }}", tokenize=False) == \
        CHAT[0]["content"]
    with pytest.raises(ValueError, match="no tokenizer"):
        model.apply_chat_template(CHAT[:1], chat_template="{{ messages[0].content }}")
    with pytest.raises(ValueError, match="empty conversation"):
        model.apply_chat_template([], chat_template="x", tokenize=False)


@pytest.mark.parametrize("source, refused", [
    ("{{ ''.__class__.__mro__ }}", "__class__"),
    ("{{ cycler.__init__.__globals__.os }}", "__init__"),
    ("{{ messages.__class__.__base__.__subclasses__() }}", "__class__"),
    ("{% set ns = namespace(_secret=1) %}", "_secret"),
    ("{{ messages.append(1) }}", "append"),  # immutable: the caller's data stays as it was
])
def test_the_sandbox_refuses_escapes(source, refused):
    template = ChatTemplate(source)
    with pytest.raises(ValueError, match="the chat template failed") as e:
        template.render(CHAT)
    assert isinstance(e.value.__cause__, jinja2.exceptions.SecurityError) and refused in str(e.value)


def test_save_pretrained_keeps_the_template(loaded, tmp_path):
    """The saved folder renders the same in axw and in transformers' AutoTokenizer."""
    from transformers import AutoTokenizer

    for name in ("gemma", "llama31_tools"):
        model, hf = loaded[name]
        model.save_pretrained(tmp_path / name)
        assert (tmp_path / name / "chat_template.jinja").read_text() == FAMILIES[name][0]
        again = AutoregressiveWrapper.from_pretrained(tmp_path / name)
        hf_again = AutoTokenizer.from_pretrained(str(tmp_path / name))
        assert again.chat_template == model.chat_template
        for kwargs in (dict(tokenize=False), dict(tokenize=True), dict(tokenize=False, date_string="1 Jan 2025")):
            for messages in ([SYSTEM, *CHAT], CHAT):
                ours = again.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
                assert ours == model.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
                assert (ours,) == both(again, hf_again, messages, add_generation_prompt=True, **kwargs)[1:]
        assert again.stop_token_ids == model.stop_token_ids


def test_push_to_hub_uploads_the_template(loaded, monkeypatch):
    """push_to_hub uploads what save_pretrained writes (huggingface_hub's network side stood in for)."""
    import huggingface_hub

    uploaded = {}

    def upload_folder(self, folder_path, **kwargs):
        uploaded.update({p.name: p.read_text() for p in Path(folder_path).iterdir() if p.suffix != ".safetensors"})
        return "https://huggingface.co/someone/chat/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model, _ = loaded["gemma"]
    model.push_to_hub("someone/chat")
    assert uploaded["chat_template.jinja"] == FAMILIES["gemma"][0]
    config = json.loads(uploaded["tokenizer_config.json"])
    assert config["bos_token"] == "<bos>" and config["eot_token"] == "<end_of_turn>"


def test_save_pretrained_keeps_named_templates(tmp_path):
    """A dict of templates (transformers' "default" and "tool_use") goes to tokenizer_config.json."""
    model = tiny_model()
    model.chat_template = ChatTemplate({"default": "plain:{{ messages[0].content }}",
                                        "tool_use": "{{ tools | tojson }}{{ bos_token }}"}, {"bos_token": "<s>"})
    model.save_pretrained(tmp_path / "m")
    again = AutoregressiveWrapper.from_pretrained(tmp_path / "m")
    assert again.chat_template == model.chat_template
    assert again.apply_chat_template(CHAT, tokenize=False) == "plain:" + CHAT[0]["content"]
    assert again.apply_chat_template(CHAT, tools=[{"a": 1}], tokenize=False) == '[{"a": 1}]<s>'
    assert again.apply_chat_template(CHAT, chat_template="tool_use", tokenize=False) == "null<s>"


def test_chat_template_jinja_wins_over_the_config(family_folders, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(family_folders["chatml"], folder)
    (folder / "chat_template.jinja").write_text("jinja file: {{ eos_token }}")
    assert AutoregressiveWrapper.from_pretrained(folder).apply_chat_template(CHAT, tokenize=False) == \
        "jinja file: <|im_end|>"


def test_template_files_special_tokens_map_and_reasoning_equal_transformers(family_folders, tmp_path):
    """Named templates in transformers' files, an old folder's special_tokens_map.json, and a message's
    reasoning under the names templates read."""
    from transformers import AutoTokenizer

    folder = tmp_path / "m"
    shutil.copytree(family_folders["chatml"], folder)
    (folder / "chat_template.jinja").write_text(
        "{{ bos_token }}|{{ eos_token }}|{{ messages[-1].reasoning_content }}|{{ messages[-1].thinking }}")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools | tojson }}{{ eos_token }}")
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": {
        "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": "</s>"}))
    model, hf = AutoregressiveWrapper.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder))
    messages = [*CHAT, {"role": "assistant", "content": "Tokyo.", "reasoning": "Japan's capital."}]
    calls = [dict(), dict(tools=[{"name": "f"}]), dict(chat_template="tool_use")]
    for kwargs in calls:
        text, hf_text = both(model, hf, messages, tokenize=False, **kwargs)
        assert text == hf_text
    assert model.apply_chat_template(messages, tokenize=False) == "<s>|</s>|Japan's capital.|Japan's capital."
    assert model.apply_chat_template(messages, tools=[{"name": "f"}], tokenize=False) == '[{"name": "f"}]</s>'


def test_stop_token_ids(family_folders, tmp_path):
    """Every EOS id of generation_config.json and config.json, then the eos and end-of-turn tokens."""
    tokenizer = bpe_tokenizer()
    folder = write_family(tmp_path / "gemma", "gemma", tokenizer, with_model=False)
    eos, eot, bos = (tokenizer.token_to_id(t) for t in ("<eos>", "<end_of_turn>", "<bos>"))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [bos, eos, 10_000]}))
    assert stop_token_ids(folder, {"eos_token_id": 20}, tokenizer, 400) == [bos, eos, 20, eot]
    assert stop_token_ids(folder, {}, None, 400) == [bos, eos]
    # an axw folder keeps its list; an older one without it has it made from the same files
    model = AutoregressiveWrapper.from_pretrained(family_folders["gemma"])
    assert model.stop_token_ids == [eos, eot]
    model.stop_token_ids = [eot, 3]
    model.save_pretrained(tmp_path / "saved")
    assert AutoregressiveWrapper.from_pretrained(tmp_path / "saved").stop_token_ids == [eot, 3]


def test_a_training_checkpoint_keeps_the_template(loaded, tmp_path):
    """The trainer's checkpoints are save_pretrained folders: the template files are its own, replaced at
    each save, and fine-tuning a chat model keeps its template."""
    from axw.train import TrainConfig, train

    chat_model, _ = loaded["gemma"]
    model = tiny_model(num_tokens=chat_model.net.num_tokens, rotary=True)
    model.tokenizer, model.chat_template = chat_model.tokenizer, chat_model.chat_template
    ids = torch.randint(0, model.net.num_tokens, (400,), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1, eval_every=0, checkpoint_every=1,
                         out_dir=str(tmp_path / "run"))
    train(model, ids, None, config)
    again = AutoregressiveWrapper.from_pretrained(tmp_path / "run")
    assert again.chat_template == model.chat_template
    assert again.apply_chat_template(CHAT, tokenize=False) == model.apply_chat_template(CHAT, tokenize=False)


def test_a_transformers_chat_checkpoint(family_folders, tmp_path):
    """A Llama chat checkpoint saved by transformers, Llama 3 instruct style: several EOS ids in
    generation_config.json and the template in tokenizer_config.json. It loads with its template and its
    stop ids, and keeps both when saved in axw's format."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = bpe_tokenizer()
    eot, eom = tokenizer.token_to_id("<|eot_id|>"), tokenizer.token_to_id("<|eom_id|>")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=40,
                                      vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=256,
                                      bos_token_id=tokenizer.token_to_id("<|begin_of_text|>"), eos_token_id=[eot, eom]))
    hf.save_pretrained(tmp_path / "hf")
    shutil.copy(family_folders["llama3"] / "tokenizer.json", tmp_path / "hf")
    shutil.copy(family_folders["llama3"] / "tokenizer_config.json", tmp_path / "hf")
    model = AutoregressiveWrapper.from_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == [eot, eom]
    assert model.eos_token_id == eot and model.stop_token_ids == [eot, eom]
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for tokenize in (False, True):
        a, b = both(model, hf_tokenizer, [SYSTEM, *CHAT], add_generation_prompt=True, tokenize=tokenize)
        assert a == b
    model.save_pretrained(tmp_path / "axw")
    again = AutoregressiveWrapper.from_pretrained(tmp_path / "axw")
    assert again.stop_token_ids == [eot, eom] and again.chat_template == model.chat_template
