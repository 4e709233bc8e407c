"""Chat templates: parity with llama.cpp on the named models, transformers' conventions, the sandbox and its limits.

llama.cpp is the oracle twice over: ``llama_chat_apply_template`` (C; it recognises a template by its markers and
formats natively, ChatML for a NULL template) and llama-cpp-python's ``Jinja2ChatFormatter`` (runs the template
with jinja2 as transformers does, as llama-server's Jinja mode does). They differ on one point for the two models
with a template: both templates insert a default system prompt when the conversation has none, which the C
formatter, seeing only "ChatML", does not know about. The tests pin that difference down exactly.
"""

from __future__ import annotations

import ctypes
import json
import logging
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import llama_cpp
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from rocmforge.errors import ValidationError
from rocmforge.gguf.reader import GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.server.chat_template import (
    CHATML_TEMPLATE,
    MAX_TEMPLATE_CHARS,
    ChatTemplate,
    ChatTemplateError,
    RenderLimits,
    load_template_file,
)

Messages = list[dict[str, Any]]

# The default system prompts the two templates insert when a conversation starts without one.
DEFAULT_SYSTEM = {
    "smollm2-135m": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "qwen2.5-coder-0.5b": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
}

CONVERSATIONS: dict[str, Messages] = {
    "system+user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Arr, hello!"},
        {"role": "user", "content": "Where is the treasure?"},
    ],
    "user-only": [{"role": "user", "content": "Hi"}],
    "multi-turn-no-system": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one."},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français 🇫🇷"},
        {"role": "user", "content": "中文、日本語、한국어, emoji 😀👍🏽, RTL שלום, e\u0301, zero-width \u200b"},
    ],
    "empty-content": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
    ],
    "empty-assistant": [
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Thanks"},
    ],
    "whitespace": [
        {"role": "user", "content": "  leading and trailing  \n\n"},
        {"role": "assistant", "content": "line 1\nline 2\n\ttabbed\n"},
        {"role": "user", "content": "\n"},
    ],
    "special-token-text": [
        {"role": "user", "content": "literal <|im_start|>assistant, <|endoftext|>, <start_of_turn> and <bos>"},
    ],
}


# -- llama.cpp oracles -------------------------------------------------------------------------------------------


def c_format(template: bytes | None, messages: Sequence[dict[str, Any]], add_ass: bool) -> str:
    """llama.cpp's C-level llama_chat_apply_template (a NULL template means its ChatML default)."""
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep: list[bytes] = []  # the struct holds bare pointers into these
    for i, message in enumerate(messages):
        role, content = message["role"].encode(), message["content"].encode()
        keep += [role, content]
        chat[i].role, chat[i].content = role, content
    size = llama_cpp.llama_chat_apply_template(template, chat, len(messages), add_ass, None, 0)
    assert size >= 0, f"llama.cpp does not recognise the template (returned {size})"
    buf = ctypes.create_string_buffer(size + 1)
    assert llama_cpp.llama_chat_apply_template(template, chat, len(messages), add_ass, buf, size + 1) == size
    return buf.raw[:size].decode("utf-8")


def jinja_format(source: str, template: ChatTemplate, messages: Messages, add_ass: bool, **kwargs: Any) -> str:
    """llama-cpp-python's Jinja2ChatFormatter, given the same bos/eos texts."""
    formatter = Jinja2ChatFormatter(
        template=source, eos_token=template.eos_token, bos_token=template.bos_token, add_generation_prompt=add_ass
    )
    return formatter(messages=messages, **kwargs).prompt


def token_piece(vocab: Any, token_id: int) -> str:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, 256, 0, True)
    assert 0 <= n <= 256
    return buf.raw[:n].decode("utf-8")


@dataclass
class Model:
    name: str
    arch: str
    tokenizer: Tokenizer
    template: ChatTemplate
    llama: llama_cpp.Llama
    source: str | None  # tokenizer.chat_template as llama.cpp reads it
    c_template: bytes | None  # llama_model_chat_template(model, NULL): what llama.cpp itself uses


@pytest.fixture(scope="module")
def model(named_model: tuple[str, Path]) -> Iterator[Model]:
    name, path = named_model
    with GGUFFile(path) as gguf_file:
        tokenizer = Tokenizer.from_metadata(dict(gguf_file.metadata), source=str(path))
        arch = gguf_file.architecture
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    c_template = llama_cpp.llama_model_chat_template(llama.model, None)
    template = ChatTemplate.from_tokenizer(tokenizer, model_arch=arch)
    yield Model(name, arch, tokenizer, template, llama, llama.metadata.get("tokenizer.chat_template"), c_template)
    llama.close()


@pytest.fixture(scope="module")
def qwen_source(model_paths: dict[str, Path]) -> str:
    with GGUFFile(model_paths["qwen2.5-coder-0.5b"]) as gguf_file:
        return str(gguf_file.metadata["tokenizer.chat_template"])


def plain(source: str = CHATML_TEMPLATE, **kwargs: Any) -> ChatTemplate:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>", name="test", **kwargs)


USER = [{"role": "user", "content": "hi"}]


# -- parity with llama.cpp on the named models ------------------------------------------------------------------


@pytest.mark.slow
def test_template_choice_matches_llama_cpp(model: Model) -> None:
    """The GGUF's template when it has one; otherwise ChatML, which is what llama.cpp picks for that file."""
    assert model.template.is_fallback == (model.source is None)
    assert (model.c_template is None) == (model.source is None)
    if model.source is not None:
        assert model.template.source == model.source == model.c_template.decode()
        assert model.template.name == "tokenizer.chat_template"
    else:
        assert model.name == "gemma3-270m"
        assert model.template.source == CHATML_TEMPLATE
        # llama.cpp's NULL template is its named "chatml" format (not the "gemma" one, which it also knows).
        for messages in CONVERSATIONS.values():
            assert c_format(None, messages, True) == c_format(b"chatml", messages, True)
            assert c_format(None, messages, True) != c_format(b"gemma", messages, True)
    vocab = llama_cpp.llama_model_get_vocab(model.llama.model)
    assert model.template.bos_token == token_piece(vocab, llama_cpp.llama_vocab_bos(vocab))
    assert model.template.eos_token == token_piece(vocab, llama_cpp.llama_vocab_eos(vocab))
    assert model.template.tokenizer_adds_bos == llama_cpp.llama_vocab_get_add_bos(vocab)


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_prompt_matches_llama_cpp(model: Model, conversation: str, add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[conversation]
    ours = model.template.render(messages, add_generation_prompt=add_generation_prompt)
    if model.source is None:
        assert ours == c_format(model.c_template, messages, add_generation_prompt)
        return
    # The same template run by llama-cpp-python's jinja2 formatter: identical text.
    assert ours == jinja_format(model.source, model.template, messages, add_generation_prompt)
    # llama.cpp's C formatter: identical once the template's default system prompt is made explicit.
    explicit = messages
    if messages[0]["role"] != "system":
        explicit = [{"role": "system", "content": DEFAULT_SYSTEM[model.name]}, *messages]
        assert ours != c_format(model.c_template, messages, add_generation_prompt)
    assert ours == c_format(model.c_template, explicit, add_generation_prompt)


@pytest.mark.slow
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_prompt_tokens_match_llama_cpp(model: Model, conversation: str) -> None:
    prompt = model.template.render(CONVERSATIONS[conversation])
    ours = model.tokenizer.encode(prompt, add_special=True, parse_special=True)
    assert ours == model.llama.tokenize(prompt.encode(), add_bos=True, special=True)
    if model.tokenizer.add_bos:  # one BOS, from the tokenizer (gemma)
        assert ours[0] == model.tokenizer.bos_token_id != ours[1]


@pytest.mark.slow
def test_fallback_is_announced(model: Model, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rocmforge.server.chat_template"):
        template = ChatTemplate.from_tokenizer(model.tokenizer, model_arch=model.arch)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if model.source is None:
        assert template.is_fallback and "ChatML" in template.name
        assert len(warnings) == 1 and "no chat template" in warnings[0] and model.arch in warnings[0]
    else:
        assert not template.is_fallback and warnings == []


def test_tools_and_tool_calls_match_jinja_formatter(qwen_source: str) -> None:
    template = plain(qwen_source)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather <now> & later",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}
    messages: Messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        {"role": "user", "content": "Thanks"},
    ]
    ours = template.render(messages, tools=tools)
    # transformers-style input: arguments as a mapping, content "" (as llama.cpp passes a null content).
    hf_call = {**call, "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
    hf_messages = [dict(m) for m in messages]
    hf_messages[1] = {"role": "assistant", "content": "", "tool_calls": [hf_call]}
    assert ours == jinja_format(qwen_source, template, hf_messages, True, tools=tools)
    assert '{"name": "get_weather", "arguments": {"city": "Zürich"}}' in ours
    assert json.dumps(tools[0], ensure_ascii=False) in ours  # tojson: no HTML escaping, no \\u escapes
    assert "<tool_response>\nsunny\n</tool_response>" in ours
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Zürich"}'  # caller's data untouched


def test_arguments_that_are_not_a_json_object_pass_through(qwen_source: str) -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "not json"}}
    out = plain(qwen_source).render([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}])
    assert '"arguments": "not json"' in out


# -- messages -------------------------------------------------------------------------------------------------


def test_text_parts_are_joined_by_newlines() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert plain().render([{"role": "user", "content": parts}]) == plain().render(
        [{"role": "user", "content": "first\nsecond"}]
    )
    assert plain().render([{"role": "user", "content": []}]) == plain().render([{"role": "user", "content": ""}])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "'image_url'"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "'input_audio'"),
        ([{"role": "user", "content": ["text"]}], r"content\[0\] must be an object"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"text must be a string"),
        ([{"role": "user", "content": 42}], "must be a string, null or a list"),
        ([{"content": "no role"}], "role must be a non-empty string"),
        ([{"role": "user"}], "needs 'content' or 'tool_calls'"),
        ([{"role": "assistant", "content": None, "tool_calls": "x"}], "tool_calls must be a list"),
        (["not a message"], r"messages\[0\] must be an object"),
        ([], "must not be empty"),
        ("hello", "must be a list"),
    ],
)
def test_invalid_messages(messages: Any, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match) as info:
        plain().render(messages)
    assert isinstance(info.value, ValidationError)  # the server's HTTP 400


def test_cyclic_input_is_refused() -> None:
    arguments: dict[str, Any] = {}
    arguments["self"] = arguments
    call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(ChatTemplateError, match="too large"):
        plain().render([{"role": "assistant", "content": "", "tool_calls": [call]}])


def test_null_content_is_empty_text() -> None:
    assert plain().render([{"role": "user", "content": None}], add_generation_prompt=False) == (
        "<|im_start|>user\n<|im_end|>\n"
    )


# -- environment conventions ------------------------------------------------------------------------------------


def test_transformers_conventions() -> None:
    source = (
        "{% for m in messages %}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "    {% generation %}[{{ m.role }}:{{ m.content }}]{% endgeneration %}\n"
        "{% endfor %}\n"
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ custom }}|{{ missing }}|"
        "{{ {'a': '<b>&ü'}|tojson }}|{{ [1, 2]|tojson(indent=2) }}|{{ strftime_now('%Y') }}"
    )
    messages = [{"role": r, "content": c} for r, c in [("a", "1"), ("b", "2"), ("c", "3")]]
    out = plain(source).render(messages, add_generation_prompt=False, custom="extra")
    year = datetime.now().strftime("%Y")
    # trim_blocks/lstrip_blocks drop the tag lines; an undefined name prints as nothing (transformers' Undefined).
    assert out == f'[a:1][b:2]<s>|</s>|False|None|extra||{{"a": "<b>&ü"}}|[\n  1,\n  2\n]|{year}'


def test_raise_exception_carries_the_templates_message() -> None:
    template = plain("{% if messages[0].role != 'system' %}{{ raise_exception('no system role') }}{% endif %}")
    with pytest.raises(ChatTemplateError) as info:
        template.render(USER)
    assert str(info.value) == "no system role"


def test_reserved_variables_cannot_be_overridden() -> None:
    with pytest.raises(ChatTemplateError, match="bos_token"):
        plain().render(USER, bos_token="x")


@pytest.mark.parametrize(("adds", "expected"), [(False, "<s>x</s>"), (True, "x")])
def test_bos_and_eos_are_not_doubled(adds: bool, expected: str) -> None:
    template = plain("{{ bos_token }}x{{ eos_token }}", tokenizer_adds_bos=adds, tokenizer_adds_eos=adds)
    assert template.render(USER) == expected


def test_verify() -> None:
    plain().verify()
    with pytest.raises(ChatTemplateError, match="needs a system"):
        plain("{{ raise_exception('needs a system message') }}").verify()


# -- hostile templates ------------------------------------------------------------------------------------------

HOSTILE: dict[str, tuple[str, str]] = {
    # runaway work
    "huge-range": ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    "nested-loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "runaway loop",
    ),
    "loop-over-data": ("{% for i in range(100000) %}{% for m in messages * 100000 %}{% endfor %}{% endfor %}", ""),
    "recursive-macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    "exponential-macro": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "runaway loop",
    ),
    "many-comparisons": (
        "{% set big = 'ab' * 400000 %}{% for i in range(100000) %}"
        + "{% if big in big and big == big and big is in(big) %}{% endif %}" * 200
        + "{% endfor %}",
        "runaway loop",
    ),
    "print-big-ints": ("{{ [10 ** 4000] * 25000 }}", "characters"),
    "recursive-loop": (
        "{% for x in [[1]] recursive %}{{ loop([[1]] * 100000) }}{% endfor %}",
        "",
    ),
    # huge values
    "string-times": ("{{ 'a' * 10**10 }}", "characters"),
    "string-times-literal": ("{{ 'a' * 1000000000 }}", "characters"),
    "list-times": ("{% set x = [0] * 1000000000 %}", "characters"),
    "doubling-concat": (
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "characters",
    ),
    "doubling-plus": (
        "{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "characters",
    ),
    "power": ("{{ 2 ** 100000000 }}", "too large"),
    "center-filter": ("{{ 'x'|center(10**9) }}", "larger than"),
    "ljust-method": ("{{ 'a'.ljust(999999999) }}", "larger than"),
    "percent-width": ("{{ '%999999999d' % 1 }}", "characters"),
    "percent-star": ("{{ '%*d' % (999999999, 1) }}", "characters"),
    "format-width": ("{{ '{:>999999999}'.format(1) }}", "characters"),
    "format-filter": ("{{ '%0999999999d'|format(1) }}", "characters"),
    "indent-filter": ("{{ ('\\n' * 1000000)|indent(1000) }}", "characters"),
    "replace-empty": ("{{ ('a' * 1000000).replace('', 'bbbbbbbbbb') }}", "characters"),
    "print-big-list": ("{{ ['x' * 1000000] * 1000 }}", "characters"),
    "join-filter": ("{{ (['x' * 1000000] * 1000)|join }}", "characters"),
    "join-method": ("{{ ''.join(['x' * 1000000] * 1000) }}", "characters"),
    "tojson-big": ("{{ (['x' * 100000] * 100)|tojson(indent=4) }}", "characters"),
    "sum-lists": ("{{ range(100000)|batch(1)|sum(start=[]) }}", "characters"),
    "batch-fill": ("{{ [1]|batch(10**8, 'x')|list }}", "larger than"),
    "macro-buffer": (
        "{% macro m() %}{% for i in range(100000) %}{% for j in range(100) %}{{ 'x' * 100 }}{% endfor %}"
        "{% endfor %}{% endmacro %}{{ m() }}",
        "",
    ),
    "to-bytes": ("{{ (1).to_bytes(10**10, 'big') }}", "larger than"),
    "strftime": ("{{ strftime_now('%Y' * 100000) }}", "format longer"),
    # Python internals
    "class-mro": ("{{ ''.__class__.__mro__ }}", "unsafe"),
    "subclasses": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    "class-in-test": ("{% if ''.__class__ %}leak{% endif %}", "unsafe"),
    "cycler-globals": ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    "joiner-globals": ("{{ joiner.__init__.__globals__ }}", "unsafe"),
    "namespace-init": ("{{ namespace.__init__ }}", "unsafe"),
    "self-reference": ("{{ self.__init__.__globals__ }}", "unsafe"),
    "raise-exception-globals": ("{{ raise_exception.__globals__ }}", "unsafe"),
    "messages-class": ("{{ messages.__class__.__base__ }}", "unsafe"),
    "attr-filter": ("{{ ''|attr('__class__') }}", "unsafe"),
    "getitem-dunder": ("{{ ''['__class__'] }}", "unsafe"),
    "format-field": ("{{ '{0.__class__}'.format('') }}", "unsafe"),
    "format-map": ("{{ '{x.__class__}'.format_map({'x': 1}) }}", "unsafe"),
    "func-code": ("{{ strftime_now.__code__ }}", "unsafe"),
    "mutation": ("{{ messages.append(1) }}", "unsafe"),
    "dict-update": ("{{ messages[0].update({'role': 'x'}) }}", "unsafe"),
    "include": ("{% include 'x' %}", "no loader"),
    "import": ("{% import 'os' as os %}", "no loader"),
    "lipsum": ("{{ lipsum(1000000) }}", "undefined"),
    "striptags": ("{{ ('<!--' * 100000)|striptags }}", "striptags"),
    # template errors
    "raise-exception": ("{{ raise_exception('no system role') }}", "no system role"),
    "undefined-attribute": ("{{ foo.bar }}", "'foo' is undefined"),
    "undefined-arithmetic": ("{{ foo + 1 }}", "'foo' is undefined"),
    "undefined-call": ("{{ foo() }}", "'foo' is undefined"),
    "missing-key-deep": ("{{ messages[0].nope.deeper }}", "undefined"),
    "type-error": ("{{ 'a' + 1 }}", "TypeError"),
    "zero-division": ("{{ 1 // 0 }}", "ZeroDivisionError"),
}


def render_hostile(source: str, **limits: Any) -> ChatTemplateError:
    start = time.monotonic()
    with pytest.raises(ChatTemplateError) as info:
        plain(source, limits=RenderLimits(**limits)).render(USER)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"took {elapsed:.1f} s"
    return info.value


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_template_fails_cleanly(case: str) -> None:
    source, match = HOSTILE[case]
    error = render_hostile(source)
    assert match in str(error)
    assert isinstance(error, ValidationError)


def test_no_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attempts = [
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}",
        f"{{{{ joiner.__init__.__globals__['__builtins__']['open']('{marker}', 'w') }}}}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
        f"{{{{ c(['touch', '{marker}']) }}}}{{% endif %}}{{% endfor %}}",
        f"{{{{ ('{{0.__init__.__globals__[os].system}}'.format(cycler))('touch {marker}') }}}}",
    ]
    for source in attempts:
        render_hostile(source)
    assert not marker.exists()


def test_limits_are_configurable() -> None:
    source = HOSTILE["exponential-macro"][0]
    start = time.monotonic()
    render_hostile(source, time_s=0.1)
    assert time.monotonic() - start < 1.0
    assert "10 steps" in str(render_hostile("{% for i in range(100) %}{% endfor %}", max_steps=10))
    assert "characters" in str(render_hostile("{{ 'x' * 1000 }}", max_chars=100))
    with pytest.raises(ValueError):
        RenderLimits(time_s=0)


def test_long_conversations_are_not_refused() -> None:
    # The size limits grow with the request: a 4 MB conversation is fine under the default 1 MiB base limit.
    messages = [{"role": "user", "content": "word " * 200_000} for _ in range(4)]
    out = plain().render(messages)
    assert len(out) > 4_000_000


# Cases that run into the time or step limit: covered once above, not repeated below.
SLOW = {"nested-loops", "loop-over-data", "exponential-macro", "recursive-loop", "macro-buffer", "many-comparisons"}


def test_process_is_unharmed_after_hostile_templates() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for case, (source, _match) in HOSTILE.items():
        if case not in SLOW:
            render_hostile(source)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB"
    assert plain().render(USER) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_budgets_are_per_render_and_per_thread() -> None:
    good, bad = plain(), plain(HOSTILE["exponential-macro"][0])
    results: list[str] = []
    errors: list[Exception] = []

    def render_good() -> None:
        for _ in range(50):
            results.append(good.render(USER))

    def render_bad() -> None:
        try:
            bad.render(USER)
        except ChatTemplateError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=render_good) for _ in range(3)] + [threading.Thread(target=render_bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 150 and set(results) == {good.render(USER)}
    assert len(errors) == 1 and "time limit" in str(errors[0])


# -- loading --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{% for %}", "line 1"),
        ("{{ unclosed", "line 1"),
        ("ok\n{% endif %}", "line 2: Encountered unknown tag 'endif'"),
        ("{% if x %}\nno end", "syntax error"),
        ("{{ 1 }", "syntax error"),
        ("{% macro %}{% endmacro %}", "syntax error"),
        ("{% for loop in y %}{% endfor %}", "syntax error"),
        ("{{" * 5000 + "}}" * 5000, "chat template test"),
        ("{% for x in y %}" * 30 + "{% endfor %}" * 30, "cannot be compiled"),
    ],
)
def test_broken_templates_fail_at_load(source: str, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        plain(source)


def test_oversized_template_fails_at_load() -> None:
    with pytest.raises(ChatTemplateError, match="characters long"):
        plain("x" * (MAX_TEMPLATE_CHARS + 1))


def fake_tokenizer(chat_template: str | None = None) -> Any:
    pieces = {1: b"<s>", 2: b"</s>"}
    return SimpleNamespace(
        bos_token_id=1,
        eos_token_id=2,
        add_bos=True,
        add_eos=False,
        chat_template=chat_template,
        token_bytes=lambda token_id, special=True: pieces[token_id],
    )


def test_override_file_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "template.jinja"
    path.write_text("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "utf-8")
    with caplog.at_level(logging.WARNING):
        template = ChatTemplate.from_tokenizer(fake_tokenizer("{{ 'from the model' }}"), override=path)
        assert ChatTemplate.from_tokenizer(fake_tokenizer(), override=str(path)).source == template.source
    assert caplog.records == []
    assert str(path) in template.name and not template.is_fallback
    assert template.render(USER) == "<user>hi"  # the tokenizer adds <s>
    # The override may also be the template's text (read by the caller); a str with `{`, `}` or a newline is text.
    inline = ChatTemplate.from_tokenizer(fake_tokenizer("{{ 'from the model' }}"), override=path.read_text("utf-8"))
    assert inline.source == template.source and inline.render(USER) == "<user>hi"
    assert ChatTemplate.from_tokenizer(fake_tokenizer("{{ 'from the model' }}")).render(USER) == "from the model"


def test_override_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ChatTemplateError, match="does not exist"):
        ChatTemplate.from_tokenizer(fake_tokenizer(), override=tmp_path / "missing.jinja")
    with pytest.raises(ChatTemplateError, match=r"missing\.jinja' does not exist"):
        ChatTemplate.from_tokenizer(fake_tokenizer(), override=str(tmp_path / "missing.jinja"))
    with pytest.raises(ChatTemplateError, match=r"\(--chat-template\) has a syntax error at line 2"):
        ChatTemplate.from_tokenizer(fake_tokenizer(), override="ok\n{% endif %}")
    with pytest.raises(ChatTemplateError, match="is a directory"):
        load_template_file(tmp_path)
    (tmp_path / "latin1.jinja").write_bytes(b"caf\xe9")
    with pytest.raises(ChatTemplateError, match="not UTF-8"):
        load_template_file(tmp_path / "latin1.jinja")
    (tmp_path / "empty.jinja").write_text(" \n", "utf-8")
    with pytest.raises(ChatTemplateError, match="is empty"):
        load_template_file(tmp_path / "empty.jinja")
    (tmp_path / "broken.jinja").write_text("{% for %}", "utf-8")
    with pytest.raises(ChatTemplateError, match=r"broken\.jinja.*syntax error"):
        ChatTemplate.from_tokenizer(fake_tokenizer(), override=tmp_path / "broken.jinja")
    locked = tmp_path / "locked.jinja"
    locked.write_text("x", "utf-8")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # Running as root, chmod would not stop the read: simulate the failure instead.
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ChatTemplateError, match=r"cannot read .*Permission denied"):
        load_template_file(locked)


# Minimal templates in the three styles of handling tool-call arguments.
_EACH_CALL = "{%% for m in messages %%}{%% for c in m.tool_calls or [] %%}%s{%% endfor %%}{%% endfor %%}"
CONCAT_ARGS = _EACH_CALL % "{{ c.function.name + ':' + c.function.arguments }}"
ITEMS_ARGS = _EACH_CALL % "{% for k, v in c.function.arguments|items %}<{{ k }}={{ v }}>{% endfor %}"
EITHER_ARGS = _EACH_CALL % (
    "{% if c.function.arguments is string %}{{ c.function.arguments }}{% else %}{{ c.function.arguments|tojson }}"
    "{% endif %}"
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (CONCAT_ARGS, 'f:{"a": 1,  "b": "x"}'),  # concatenates: keeps the string, exactly as sent
        (ITEMS_ARGS, "<a=1><b=x>"),  # iterates: needs the object
        (EITHER_ARGS, '{"a": 1,  "b": "x"}'),  # prints JSON either way: keeps the string
    ],
)
def test_tool_call_arguments_follow_the_template(source: str, expected: str) -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": '{"a": 1,  "b": "x"}'}}
    assert plain(source).render([{"role": "assistant", "tool_calls": [call]}]) == expected


# Exercises what the budget instrumentation touches (loops of every kind, macros, call blocks, filters, ~, + * %,
# str.format, slices, namespaces, block sets and filters) to show that it changes no output.
KITCHEN_SINK = """\
{%- macro turn(role, text) -%}<{{ role|upper }}>{{ text|trim }}</{{ role }}>{%- endmacro -%}
{%- macro wrap() -%}[{{ caller() }}]{%- endmacro -%}
{%- set ns = namespace(count=0, roles=[], text='') -%}
{%- for message in messages[::-1] if message.role != 'tool' -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- set ns.roles = ns.roles + [message.role] -%}
{%- endfor -%}
{{ ns.count }}|{{ ns.roles|join(',') }}|{{ ns.roles|unique|list|length }}
{% for message in messages -%}
  {%- if loop.first %}first {% endif -%}
  {{- loop.index }}/{{ loop.length }} {{ loop.cycle('odd', 'even') }} {{ loop.previtem.role if loop.previtem }}
  {{- turn(message.role, message.content) }}
  {%- if loop.changed(message.role) %}*{% endif %}
  {%- call wrap() %}{{ message.content[:5] ~ '…' ~ (message.content|length) }}{% endcall %}
  {%- if message.content.startswith('B') %}{% continue %}{% endif %}
  {%- set ns.text = ns.text ~ message.content.split()|first|default('') -%}
{% endfor %}
{%- set block %}{% for k, v in {'b': 2, 'a': 1}|dictsort %}{{ k }}={{ v }};{% endfor %}{% endset -%}
{{ block }}{{ ns.text }}
{% filter title %}{{ messages|map(attribute='role')|select('ne', 'tool')|join(' ') }}{% endfilter %}
{{ '%s-%05.1f-%r' % ('x', 3.14159, [1]) }} {{ '{0}:{name:>6}'.format(1, name='ab') }} {{ 'ab' * 3 }} {{ 2 ** 10 }}
{{ [1, 2] + [3] }} {{ (messages|selectattr('role', 'equalto', 'user')|list)[-1].content|replace('o', '0') }}
{{ range(3)|batch(2)|list }} {{ range(5)|slice(2)|list }} {{ messages|groupby('role')|map(attribute='grouper')|list }}
{{ ([{'x': 'é'}]|tojson) ~ ({'k': [1, 2]}|tojson(indent=1)) }} {{ 'a\\nb'|indent(2, first=true) }} {{ 'x'|center(5) }}
{{ messages|length is divisibleby(2) }} {{ 'user' in messages|map(attribute='role') }} {{ none|default('d') }}
{% for x in [1, [2, [3, 4]], 5] recursive %}{% if x is iterable %}({{ loop(x) }}){% else %}{{ x }}{% endif %}
{%- endfor %}
{{ messages[0].items()|list|length }} {{ (messages|first).role|capitalize }} {{ '  pad '|trim|length }}
{%- if add_generation_prompt %}{{ bos_token ~ eos_token }}{% endif %}"""


def test_instrumentation_changes_no_output() -> None:
    messages: Messages = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hello world"},
        {"role": "assistant", "content": "Bonjour, café"},
        {"role": "tool", "content": "42"},
        {"role": "user", "content": "  good morning  "},
    ]
    template = plain(KITCHEN_SINK)
    for add in (True, False):
        assert template.render(messages, add_generation_prompt=add) == jinja_format(
            KITCHEN_SINK, template, messages, add
        )


@pytest.mark.parametrize("name", ["MISTRAL_INSTRUCT", "MIXTRAL_INSTRUCT", "LLAMA3_INSTRUCT", "CHATML"])
def test_other_known_templates_match_jinja_formatter(name: str) -> None:
    from llama_cpp import llama_chat_format

    source = getattr(llama_chat_format, f"{name}_CHAT_TEMPLATE")
    template = plain(source)
    messages = CONVERSATIONS["multi-turn-no-system"]
    assert template.render(messages) == jinja_format(source, template, messages, True)
    if name != "CHATML" and name != "LLAMA3_INSTRUCT":  # the Mistral templates refuse a system role
        with pytest.raises(ChatTemplateError, match="alternate"):
            template.render(CONVERSATIONS["system+user"])
