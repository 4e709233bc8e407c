"""Chat templates: OpenAI-style messages -> the prompt text a model was trained on.

Where the template comes from
-----------------------------
1. ``--chat-template FILE`` (``ChatTemplate.from_tokenizer(..., override=FILE)``): the file's text, verbatim
   (``override`` may also be the template text itself).
2. The GGUF's ``tokenizer.chat_template`` (``Tokenizer.chat_template``).
3. Otherwise a **ChatML fallback**, with a warning logged. This is what llama.cpp does for a model without a
   template, whatever its architecture: ``llama_model_chat_template()`` returns NULL for such a file (its only
   special case is Mistral-Small-2503's tekken vocabulary), ``llama_chat_apply_template(NULL, ...)`` formats
   as ``chatml``, and llama-server's ``common_chat_templates_init`` substitutes its ChatML Jinja source for an
   empty template. So gemma3-270m (a base model whose GGUF has no template) gets ChatML here as in llama.cpp,
   not Gemma's ``<start_of_turn>`` format::

       <|im_start|>{role}\\n{content}<|im_end|>\\n ... [<|im_start|>assistant\\n]

   (Its vocabulary has no ``<|im_start|>`` token, so those markers are tokenized as plain text, again exactly as
   llama.cpp does.) The prompt is faithful to llama.cpp rather than to what such a model understands best:
   give it a template with ``--chat-template`` to change that.

Rendering follows Hugging Face transformers' conventions, which is what published templates are written for:
``jinja2.sandbox.ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension, a pass-through ``{% generation %}`` tag, a ``tojson`` filter that does not HTML-escape, and the
context variables ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools``,
``raise_exception(msg)`` and ``strftime_now(fmt)``, plus any extra keyword arguments of :meth:`ChatTemplate.render`.
``bos_token``/``eos_token`` are the texts of the model's BOS/EOS tokens. As llama-server does, a leading
``bos_token`` (trailing ``eos_token``) is removed from the result when the tokenizer adds that token itself,
so ``tokenizer.encode(prompt, add_special=True, parse_special=True)`` never doubles it.

Messages are normalised before rendering: ``content`` given as OpenAI's list of parts becomes the text parts
joined by newlines (llama.cpp's and vLLM's choice for string-only templates; any non-text part is an error naming
its type), a null ``content`` becomes ``""`` (as llama.cpp passes it), and other fields (``tool_calls``,
``tool_call_id``, ``name``, ...) pass through. A tool call's ``function.arguments`` arrives as a JSON string
(OpenAI's wire format); templates written for transformers want a mapping (they ``tojson`` it or iterate its
items; given the string, ``tojson`` would quote it a second time), others concatenate the string. As llama.cpp
does, a probe render (once per template) decides: the JSON-object strings are decoded for templates that show an
object's keys but not a string's JSON, and passed unchanged otherwise.

Safety
------
A template is untrusted code from a model file. It can never reach Python internals: the sandbox refuses
attributes that start with ``_`` or belong to functions, frames, code objects and the like, and here such an
access fails at once with :class:`ChatTemplateError` (stock Jinja only returns an undefined value that fails
when it is used, so a test such as ``{% if x.__class__ %}`` would otherwise pass silently). ``include``, ``import``
and ``extends`` have no loader to read from, and the ``lipsum`` global and the ``pprint``, ``striptags``,
``urlize`` and ``wordwrap`` filters are removed (regex- or text-heavy helpers no chat template needs, whose cost
cannot be bounded cheaply).

Jinja has no timeout and renders in the caller's thread, so every render runs under a budget
(:class:`RenderLimits`) that instrumented hooks enforce while the template runs:

* **Time and steps.** Every loop iteration (a custom code generator wraps each ``for`` loop's iterable), every
  comparison, call (macros, methods, globals), filter, test, attribute or item access, intercepted operator and
  output chunk counts as a step and checks the deadline, so a runaway loop, nested loops or exponential macro
  recursion stop within the time limit (checking between chunks of output alone would not do: a loop that prints
  nothing never yields). Deep recursion ends with Python's RecursionError, reported as a ChatTemplateError.
  ``range()`` is limited to 100,000 items by the sandbox. Jinja's constant folding is switched off and filters
  are marked so that Jinja never runs them while compiling; what it still evaluates then (literals, tests and
  attributes of literals) is bounded by the template's own size and passes the same checks.
* **Size.** No single value, and not the output, may exceed a size limit, and the total size of the values the
  template creates is capped, so doubling a string in a loop, ``'a' * 10**10``, ``'%999999999d' % 1``,
  ``'x'|center(10**9)``, ``2 ** 10**9``, ``lst|join`` of a huge list or printing ``[big] * 1000`` are refused
  *before* the memory is allocated: the operators ``+ * % **``, the concatenation ``~``, the buffers of macros and
  blocks, str/bytes methods and filters that can multiply their input (``replace``, ``join``, ``center`` and
  ``ljust``-style padding, ``expandtabs``, ``format``, ``indent``, ``tojson``, ...) estimate their result first.
  The limits grow with the size of the request, so a long conversation is never refused for its own length.

What is not bounded is a single C-level operation between two steps (one comparison, sort or slice of values that
are themselves within the size limit): it costs at most milliseconds, and the deadline is checked right after.

Errors: syntax errors (and a template that cannot compile) raise ChatTemplateError when the ChatTemplate is built,
so a server fails at start; anything that goes wrong while rendering (``raise_exception``, an undefined value used
in arithmetic or attribute access, a sandbox violation, a limit, a Python error inside the template) raises
ChatTemplateError at render time. ChatTemplateError is a ValidationError, which the server maps to HTTP 400.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import os
import string
import time
import types
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context

from rocmforge.errors import ValidationError

if TYPE_CHECKING:
    from jinja2.parser import Parser
    from jinja2.runtime import Context

    from rocmforge.gguf.tokenizer import Tokenizer

__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "ChatTemplateError", "RenderLimits", "load_template_file"]

logger = logging.getLogger(__name__)


class ChatTemplateError(ValidationError):
    """A chat template cannot be loaded, or cannot render these messages; the message says why."""


class _LimitExceeded(ChatTemplateError):
    """A render went over its time, step or size budget."""


# The fallback, llama.cpp's "chatml" format (llama_chat_apply_template and llama-server's CHATML_TEMPLATE_SRC).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

# Published templates are at most tens of kilobytes; a bigger one is a broken or hostile file.
MAX_TEMPLATE_CHARS = 1 << 20
# strftime output can be ~256x its format (CPython retries with a growing buffer), so keep formats short.
_MAX_STRFTIME_FORMAT = 256
# Python ints above this many bits come only from deliberate `**`/`*` abuse; their arithmetic is unbounded work.
_MAX_INT_BITS = 1 << 16
# json.dumps indentation is per nesting level; anything wider than this is not a formatting choice.
_MAX_JSON_INDENT = 64
# batch/slice fill lists to a requested count: bound it like the sandbox bounds range().
_MAX_COUNT = 100_000
# Cost of one list/dict slot (a pointer) in the size accounting, in "characters".
_SLOT_COST = 8
# Requests bigger than this (or self-referencing structures from a Python caller) are refused outright.
_MAX_INPUT_CHARS = 1 << 31
_MAX_INPUT_VALUES = 1 << 20
_CONTEXT_KWARGS = frozenset({"_loop_vars", "_block_vars"})
_RESERVED = frozenset(
    {"messages", "add_generation_prompt", "tools", "bos_token", "eos_token", "raise_exception", "strftime_now"}
)


@dataclass(frozen=True)
class RenderLimits:
    """Budget of one render.

    time_s: wall-clock limit (checked at every step). max_steps: loop iterations, calls, filters, attribute and
    item accesses, operators and output chunks. max_chars: base size limit, in characters, for the output and
    for any single value the template builds; twice the request's own size (messages, tools, extra variables)
    is added to it. The total size of all values the template creates is capped at ``alloc_factor`` times that.
    """

    time_s: float = 1.0
    max_steps: int = 5_000_000
    max_chars: int = 1 << 20
    alloc_factor: int = 16

    def __post_init__(self) -> None:
        if not (self.time_s > 0 and self.max_steps > 0 and self.max_chars > 0 and self.alloc_factor >= 1):
            raise ValueError(f"invalid RenderLimits {self}")


class _Budget:
    """What one render may still spend; shared by the hooks through a context variable."""

    __slots__ = ("alloc_cap", "allocated", "deadline", "limits", "output", "output_cap", "steps", "value_cap")

    def __init__(self, limits: RenderLimits, input_chars: int = 0) -> None:
        self.limits = limits
        self.value_cap = limits.max_chars + 2 * input_chars
        self.output_cap = self.value_cap
        self.alloc_cap = limits.alloc_factor * self.value_cap
        self.deadline = time.monotonic() + limits.time_s
        self.steps = 0
        self.allocated = 0
        self.output = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise _LimitExceeded(f"the chat template ran more than {self.limits.max_steps} steps (runaway loop?)")
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(
                f"the chat template ran longer than its {self.limits.time_s:g} s time limit (runaway loop?)"
            )

    def check(self, size: int, what: str) -> None:
        """Refuse to build a value of `size` characters (an estimate made before building it)."""
        if size > self.value_cap:
            raise _LimitExceeded(
                f"the chat template tried to build {what} of about {size} characters; the limit is {self.value_cap}"
            )

    def charge(self, size: int, what: str) -> None:
        """Check a value about to be created and count it against the render's total."""
        self.check(size, what)
        self.allocated += size
        if self.allocated > self.alloc_cap:
            raise _LimitExceeded(
                f"the chat template created more than {self.alloc_cap} characters of intermediate values"
            )

    def emit(self, size: int) -> None:
        self.tick()
        self.output += size
        if self.output > self.output_cap:
            raise _LimitExceeded(f"the chat template's output exceeds the limit of {self.output_cap} characters")


_ACTIVE: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("rocmforge_chat_template_budget", default=None)


def _budget() -> _Budget:
    # Outside ChatTemplate.render (Jinja folding a constant while compiling) the per-value checks still apply.
    active = _ACTIVE.get()
    return active if active is not None else _Budget(RenderLimits())


# -- size estimates ---------------------------------------------------------------------------------------------


def _text_size(obj: Any, limit: int, indent: int = 0, max_nodes: int | None = None) -> int:
    """Upper-bound estimate of len(str(obj)) (or of its JSON), walking containers without recursion.

    Stops as soon as the estimate passes `limit` (which also ends the walk of a cyclic structure), or returns
    limit + 1 after `max_nodes` values. Each container element also pays `indent` per nesting level, for
    json.dumps(indent=...).
    """
    total = 0
    nodes_left = max_nodes if max_nodes is not None else -1
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        nodes_left -= 1
        if nodes_left == 0:
            return limit + 1
        item, depth = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item) + 3  # quotes and b-prefix when nested
        elif isinstance(item, Namespace):
            stack.append((item._Namespace__attrs, depth))  # type: ignore[attr-defined]  # its repr shows them
        elif isinstance(item, Mapping):
            total += 2 + len(item) * (4 + (depth + 1) * indent)
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)):
            total += 16 + len(item) * (2 + (depth + 1) * indent)
            stack.extend((e, depth + 1) for e in item)
        elif isinstance(item, int):
            total += item.bit_length() * 30103 // 100000 + 2  # decimal digits and sign
        else:
            total += 32  # floats, None, and objects with a short default repr
        if total > limit:
            return total
    return total


def _cost(value: Any) -> int:
    """Size charged for a newly created value: characters of a string, slots and new strings of a container."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return _SLOT_COST * len(value) + sum(len(e) for e in value if isinstance(e, str))
    if isinstance(value, Mapping):
        return 2 * _SLOT_COST * len(value)
    return 0


def _int_args(args: Iterable[Any], cap: int, what: str) -> None:
    # Widths, counts and lengths: any integer argument beyond the size limit can only be an attack.
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > cap:
            raise _LimitExceeded(f"{what}: argument {arg} is larger than the template size limit ({cap})")


def _replace_size(s: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, (str, bytes)) or not isinstance(new, (str, bytes)):
        return len(s)  # Python raises TypeError
    n = len(s) + 1 if not old else s.count(old)  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(0, len(new) - len(old))


def _join_size(sep: Any, items: Sequence[Any], limit: int) -> int:
    sep_len = len(sep) if isinstance(sep, (str, bytes)) else len(str(sep))
    total = sep_len * max(0, len(items) - 1)
    for item in items:
        total += len(item) if isinstance(item, (str, bytes)) else _text_size(item, limit)
        if total > limit:
            break
    return total


def _spec_width(spec: str, cap: int) -> int:
    """Largest number in a str.format spec or %-conversion (width or precision); huge ones count as cap + 1."""
    widest = 0
    for run in "".join(ch if ch.isdigit() else " " for ch in spec).split():
        # Ten or more digits exceed any cap; not calling int() on them also avoids CPython's digit limit.
        widest = max(widest, cap + 1 if len(run) > 9 else int(run))
    return widest


def _percent_size(fmt: str | bytes, args: Any, cap: int) -> int:
    """Upper bound of len(fmt % args): each conversion prints at most the widest argument plus its width."""
    if isinstance(args, tuple):
        values: list[Any] = list(args)
    elif isinstance(args, Mapping):
        values = list(args.values())
    else:
        values = [args]
    widest_arg = max((_text_size(v, cap) for v in values), default=0)
    star = max((abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    total = len(text)
    i = text.find("%")
    while i >= 0 and total <= cap:
        j = i + 1
        if j < len(text) and text[j] == "(":
            close = text.find(")", j)
            j = len(text) if close < 0 else close + 1
        start = j
        while j < len(text) and text[j] in "#0- +*.0123456789hlL":
            j += 1
        spec = text[start:j]
        width = _spec_width(spec, cap)
        if "*" in spec:
            width = max(width, star)
        total += widest_arg + width
        i = text.find("%", j + 1)
    return total


def _format_size(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any], cap: int) -> int:
    """Upper bound of len(fmt.format(*args, **kwargs)); nested replacement fields in specs are refused."""
    values = [*args, *kwargs.values()]
    widest_arg = max((_text_size(v, cap) for v in values), default=0)
    total = 0
    for literal, field, spec, _conversion in string.Formatter().parse(fmt):
        total += len(literal)
        if field is not None:
            if spec and "{" in spec:
                raise ChatTemplateError("the chat template uses a nested replacement field in a format spec")
            total += widest_arg + _spec_width(spec or "", cap)
        if total > cap:
            break
    return total


def _check_int_op(op: str, left: int, right: int) -> None:
    if op == "**":
        if right > 0 and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_INT_BITS:
            raise _LimitExceeded(f"the chat template computes {left} ** {right}, a number too large to allow")
    elif op == "*" and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
        raise _LimitExceeded("the chat template multiplies numbers too large to allow")


# -- amplifying str/bytes methods ---------------------------------------------------------------------------------

_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget) -> tuple[Any, ...]:
    """Pre-check a call of a bound str/bytes method that can produce more than its input; may materialise args."""
    s = method.__self__
    name = method.__name__
    cap = budget.value_cap
    if name in _PADDING_METHODS or name == "expandtabs":
        _int_args([*args, *kwargs.values()], cap, f"str.{name}")
    what = f"a string (str.{name})"
    if name in _PADDING_METHODS:
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            budget.charge(max(len(s), width), what)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            budget.charge(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(tabsize, 0), what)
    elif name == "replace" and len(args) >= 2:
        budget.charge(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1)), what)
    elif name == "join" and args:
        items = _materialise(args[0], budget, f"str.{name}")
        budget.charge(_join_size(s, items, cap), what)
        args = (items, *args[1:])
    elif name == "translate" and args:
        table = args[0]
        widest = 1
        if isinstance(table, Mapping):
            widest = max((len(v) for v in table.values() if isinstance(v, (str, bytes))), default=1)
        budget.charge(len(s) * max(widest, 1), what)
    return args


def _materialise(iterable: Any, budget: _Budget, what: str) -> list[Any]:
    # Consuming a generator (e.g. from `map`) here lets us size it before joining; iteration steps are counted.
    if isinstance(iterable, (list, tuple)):
        return list(iterable)
    items: list[Any] = []
    for item in iterable:
        budget.tick()
        items.append(item)
    budget.charge(_SLOT_COST * len(items), f"a list ({what})")
    return items


# -- filters ------------------------------------------------------------------------------------------------------


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | str | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """transformers' tojson: plain json.dumps, no HTML escaping, non-ASCII kept."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget) -> Any:
    """Pre-check filters whose output can outgrow their input; returns `value`, possibly materialised."""
    cap = budget.value_cap
    what = f"a value (filter {name!r})"
    if name in ("batch", "slice"):
        count = args[0] if args else kwargs.get("linecount" if name == "batch" else "slices", 0)
        if isinstance(count, int) and count > _MAX_COUNT:
            raise _LimitExceeded(f"filter {name!r}: count {count} is larger than {_MAX_COUNT}")
    elif name == "center":
        width = args[0] if args else kwargs.get("width", 80)
        if isinstance(width, int) and isinstance(value, str):
            budget.charge(max(len(value), width), what)
    elif name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        budget.charge(len(value) + (value.count("\n") + 1) * max(pad, 0), what)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        budget.charge(_replace_size(value, str(args[0]), str(args[1]), count if count is not None else -1), what)
    elif name == "join":
        value = _materialise(value, budget, "filter 'join'")
        sep = args[0] if args else kwargs.get("d", "")
        budget.charge(_join_size(sep, value, cap), what)
    elif name == "format" and isinstance(value, str):
        budget.charge(_percent_size(value, kwargs or args, cap), what)
    elif name == "string" and not isinstance(value, str):
        budget.charge(_text_size(value, cap), what)
    elif name == "list" and isinstance(value, str):
        budget.charge(_SLOT_COST * len(value), what)
    elif name == "tojson":
        indent = args[1] if len(args) > 1 else kwargs.get("indent")
        width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
        if width > _MAX_JSON_INDENT:
            raise _LimitExceeded(f"filter 'tojson': indent {indent!r} is wider than {_MAX_JSON_INDENT}")
        budget.charge(_text_size(value, cap, width), what)
    elif name == "sum":
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        if not isinstance(start, (int, float)):
            # sum() of sequences copies the running total at every step: quadratic in C, with no step checks.
            value = _materialise(value, budget, "filter 'sum'")
            sizes = sum(len(v) for v in value if isinstance(v, (str, list, tuple)))
            budget.charge(_SLOT_COST * len(value) * (sizes + _cost(start)), what)
    return value


def _wrap_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A budgeted copy of a filter.

    It is marked pass_context (and passes the original its own kind of first argument) also so that Jinja never
    runs it while compiling: Jinja folds filters of constants at compile time, outside any render budget.
    """
    pass_arg = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context  # applied after functools.wraps, so it replaces the original's marker
    @functools.wraps(func)
    def budgeted(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if name in _SIZED_FILTERS:
            _int_args([*args, *kwargs.values()], budget.value_cap, f"filter {name!r}")
        value = _check_filter(name, value, args, kwargs, budget)
        if pass_arg == "context":
            result = func(context, value, *args, **kwargs)
        elif pass_arg == "eval_context":
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg == "environment":
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        budget.charge(_cost(result), f"a value (filter {name!r})")
        return result

    return budgeted


def _wrap_test(func: Callable[..., Any]) -> Callable[..., Any]:
    """A test (``is divisibleby``, ``is in``, ...) that counts as a step; its pass-arg marker is kept."""

    @functools.wraps(func)
    def budgeted(*args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        return func(*args, **kwargs)

    return budgeted


_REMOVED_FILTERS = ("pprint", "striptags", "urlize", "wordwrap")
# Filters whose integer arguments are widths or counts (elsewhere a big number is just a value to compare).
_SIZED_FILTERS = frozenset({"batch", "center", "format", "indent", "slice", "tojson", "truncate"})


# -- globals ------------------------------------------------------------------------------------------------------


def _raise_exception(message: Any) -> None:
    """The templates' raise_exception(msg): the template's own message becomes the error."""
    raise ChatTemplateError(str(message))


def _strftime_now(fmt: Any) -> str:
    """transformers' strftime_now(fmt): the local time, formatted."""
    if not isinstance(fmt, str):
        raise ChatTemplateError(f"strftime_now() needs a format string, not {type(fmt).__name__}")
    if len(fmt) > _MAX_STRFTIME_FORMAT:
        raise ChatTemplateError(f"strftime_now(): format longer than {_MAX_STRFTIME_FORMAT} characters")
    return datetime.now().strftime(fmt)


# -- the environment ----------------------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """transformers' ``{% generation %}...{% endgeneration %}`` (marks assistant text for training): a no-op here."""

    tags = {"generation"}  # noqa: RUF012  # jinja2's Extension API declares it as a plain class attribute

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _BudgetedCodeGenerator(CodeGenerator):
    """Compiles every loop's iterable and every comparison through the budget, and ``~`` through a size check."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # The iterable was already analysed for names; an environment attribute adds none.
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("_rocmforge_iter"), [node.iter], [], None, None, lineno=node.iter.lineno
        )
        super().visit_For(node, frame)

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        # `==` and `in` on big values cost time: count a step per comparison, before it runs.
        self.write("(environment._rocmforge_step(")
        self.visit(node.expr, frame)
        self.write(")")
        for operand in node.ops:
            self.visit(operand, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # Same as Jinja's for autoescape off (always the case here), through the environment's checked join.
        self.write("environment._rocmforge_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment, with unsafe access failing at once and every step budgeted."""

    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _GenerationTag],
            # No compile-time evaluation: constant folding would run template code outside the render budget.
            optimized=False,
            finalize=self._rocmforge_finalize,
            autoescape=False,
        )
        self.globals.pop("lipsum", None)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        filters = dict(self.filters)
        filters["tojson"] = _tojson
        for name in _REMOVED_FILTERS:
            filters.pop(name, None)
        self.filters = {name: _wrap_filter(name, func) for name, func in filters.items()}
        self.tests = {name: _wrap_test(func) for name, func in self.tests.items()}

    # Runtime hooks called by compiled templates -------------------------------------------------------------------
    def _rocmforge_iter(self, iterable: Any) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            budget.tick()
            yield item

    def _rocmforge_step(self, value: Any) -> Any:
        _budget().tick()
        return value

    def _rocmforge_concat(self, parts: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.tick()
        size = sum(len(p) if isinstance(p, str) else _text_size(p, budget.value_cap) for p in parts)
        budget.charge(size, "a string (~)")
        return "".join(str(p) for p in parts)

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        # Buffers of macros, {% set %} blocks, {% filter %} blocks and caller(): size them before joining.
        budget = _budget()
        items = parts if isinstance(parts, list) else list(parts)
        budget.tick()
        budget.charge(sum(len(p) for p in items), "a block's output")
        return "".join(items)

    def _rocmforge_finalize(self, value: Any) -> Any:
        # Every {{ expression }} passes here before str(): size the conversion of containers before it happens.
        if not isinstance(value, str):
            budget = _budget()
            budget.tick()
            budget.charge(_text_size(value, budget.value_cap), "the text of a value")
        return value

    # Sandbox hooks ---------------------------------------------------------------------------------------------------
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _budget()
        budget.tick()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            budget.charge(_cost(result), "a slice")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        what = f"a value ({operator})"
        if isinstance(left, int) and isinstance(right, int):
            _check_int_op(operator, left, right)
        elif operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
                unit = 1 if isinstance(seq, (str, bytes)) else _SLOT_COST
                budget.charge(unit * len(seq) * max(n, 0), what)
        elif operator == "+":
            if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
                budget.charge(len(left) + len(right), what)
            elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                budget.charge(_SLOT_COST * (len(left) + len(right)), what)
        elif operator == "%" and isinstance(left, (str, bytes)):
            budget.charge(_percent_size(left, right, budget.value_cap), what)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        @functools.wraps(sandboxed)
        def sized(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            if is_format_map:
                mapping = args[0] if args and isinstance(args[0], Mapping) else {}
                size = _format_size(fmt, (), mapping, budget.value_cap)
            else:
                size = _format_size(fmt, args, kwargs, budget.value_cap)
            budget.charge(size, "a string (str.format)")
            return sandboxed(*args, **kwargs)

        return sized

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, (str, bytes, int)):
            own = {k: v for k, v in kwargs.items() if k not in _CONTEXT_KWARGS}
            if isinstance(__obj.__self__, (str, bytes)):
                args = _check_str_method(__obj, args, own, budget)
            elif __obj.__name__ == "to_bytes":
                _int_args([*args, *own.values()], budget.value_cap, "int.to_bytes")
        result = super().call(__context, __obj, *args, **kwargs)
        if not isinstance(__obj, Macro):  # a macro's text was charged when its buffer was joined
            budget.charge(_cost(result), "a call's result")
        return result


# -- messages -----------------------------------------------------------------------------------------------------


def _text_content(content: Any, index: int) -> str:
    """A message's content as text: a string, null (""), or OpenAI's list of text parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise ChatTemplateError(f"messages[{index}].content[{j}] must be an object with a 'type'")
            if part["type"] != "text":
                raise ChatTemplateError(
                    f"messages[{index}].content[{j}] has type {part['type']!r}; only 'text' parts are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError(f"messages[{index}].content[{j}].text must be a string")
            texts.append(text)
        return "\n".join(texts)
    raise ChatTemplateError(
        f"messages[{index}].content must be a string, null or a list of parts, not {type(content).__name__}"
    )


def _tool_call(call: Any, index: int, j: int) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise ChatTemplateError(f"messages[{index}].tool_calls[{j}] must be an object")
    out = dict(call)
    if isinstance(call.get("function"), Mapping):
        out["function"] = dict(call["function"])  # a copy: arguments may be replaced by their decoded form
    return out


def _decode_arguments(messages: list[dict[str, Any]]) -> None:
    """Replace tool calls' JSON-object argument strings by the objects (in the copies _normalise made)."""
    for message in messages:
        for call in message.get("tool_calls") or ():
            function = call.get("function")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                try:
                    decoded = json.loads(function["arguments"])
                except ValueError:
                    continue  # not JSON: the template gets the string as it came
                if isinstance(decoded, dict):
                    function["arguments"] = decoded


def _has_string_arguments(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(call.get("function"), dict) and isinstance(call["function"].get("arguments"), str)
        for message in messages
        for call in message.get("tool_calls") or ()
    )


def _normalise(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of message objects")
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be an object, not {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"messages[{i}].role must be a non-empty string")
        tool_calls = message.get("tool_calls")
        if "content" not in message and not tool_calls:
            raise ChatTemplateError(f"messages[{i}] needs 'content' or 'tool_calls'")
        normalised = dict(message)
        normalised["content"] = _text_content(message.get("content"), i)
        if tool_calls is not None:
            if isinstance(tool_calls, (str, bytes)) or not isinstance(tool_calls, Sequence):
                raise ChatTemplateError(f"messages[{i}].tool_calls must be a list")
            normalised["tool_calls"] = [_tool_call(c, i, j) for j, c in enumerate(tool_calls)]
        out.append(normalised)
    return out


# -- the template -------------------------------------------------------------------------------------------------


def load_template_file(path: str | os.PathLike[str]) -> str:
    """The text of a chat template file (``--chat-template FILE``), or a ChatTemplateError saying why not."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ChatTemplateError(f"chat template file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ChatTemplateError(f"chat template file {str(p)!r} is a directory") from None
    except OSError as exc:
        raise ChatTemplateError(f"cannot read chat template file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChatTemplateError(f"chat template file {str(p)!r} is not UTF-8 text: {exc}") from None
    if not text.strip():
        raise ChatTemplateError(f"chat template file {str(p)!r} is empty")
    return text


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    # llama.cpp passes common_token_to_piece(vocab, id, special=true); a missing token is "".
    if token_id is None:
        return ""
    return tokenizer.token_bytes(token_id, special=True).decode("utf-8", errors="replace")


# The tool-call probe (see ChatTemplate._wants_object_arguments): its arguments and a small budget.
_PROBE_ARGUMENTS = {"argument_needle": "print('Hello, World!')"}
_PROBE_LIMITS = RenderLimits(time_s=0.25)


class ChatTemplate:
    """A compiled, sandboxed chat template.

    Build it from a model's tokenizer with :meth:`from_tokenizer`, or directly from template source. Instances
    are immutable and safe to share between threads.
    """

    def __init__(
        self,
        source: str,
        bos_token: str,
        eos_token: str,
        name: str,
        *,
        tokenizer_adds_bos: bool = False,
        tokenizer_adds_eos: bool = False,
        limits: RenderLimits | None = None,
        is_fallback: bool = False,
    ) -> None:
        """Compile `source`; raises ChatTemplateError naming `name` and the line for a syntax error.

        tokenizer_adds_bos / tokenizer_adds_eos: the prompt will be tokenized with add_special=True and the
        tokenizer adds BOS / EOS itself, so a leading bos_token / trailing eos_token is removed from the output
        (as llama-server does).
        """
        if not isinstance(source, str):
            raise ChatTemplateError(f"chat template {name}: source must be a string, not {type(source).__name__}")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(
                f"chat template {name} is {len(source)} characters long; the limit is {MAX_TEMPLATE_CHARS}"
            )
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.tokenizer_adds_bos = tokenizer_adds_bos
        self.tokenizer_adds_eos = tokenizer_adds_eos
        self.limits = limits if limits is not None else RenderLimits()
        self.is_fallback = is_fallback
        self._object_arguments: bool | None = None  # decided on first use, see _wants_object_arguments
        self._env = _ChatSandbox()
        try:
            self._template = self._env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"chat template {name} has a syntax error at line {exc.lineno}: {exc.message}"
            ) from exc
        except RecursionError:
            raise ChatTemplateError(f"chat template {name} is nested too deeply to compile") from None
        except Exception as exc:
            raise ChatTemplateError(f"chat template {name} cannot be compiled: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Tokenizer,
        override: str | os.PathLike[str] | None = None,
        model_arch: str | None = None,
        *,
        limits: RenderLimits | None = None,
    ) -> ChatTemplate:
        """The chat template for a model: `override` if given, else the GGUF's, else ChatML (with a warning).

        `override` (``--chat-template``) is a path (a PathLike, or a str without any of ``{ } newline``, read with
        load_template_file) or the template text itself (a str with one of those, as vLLM tells them apart).
        `model_arch` (general.architecture) only makes the fallback's warning more specific. See the module
        docstring for the fallback.
        """
        kwargs: dict[str, Any] = {
            "bos_token": _token_text(tokenizer, tokenizer.bos_token_id),
            "eos_token": _token_text(tokenizer, tokenizer.eos_token_id),
            "tokenizer_adds_bos": bool(tokenizer.add_bos),
            "tokenizer_adds_eos": bool(tokenizer.add_eos),
            "limits": limits,
        }
        if override is not None:
            if isinstance(override, str) and any(c in override for c in "{}\n"):
                return cls(override, name="(--chat-template)", **kwargs)
            return cls(load_template_file(override), name=f"file {os.fspath(override)!r}", **kwargs)
        if tokenizer.chat_template:
            return cls(tokenizer.chat_template, name="tokenizer.chat_template", **kwargs)
        model = f"this {model_arch} model" if model_arch else "the model"
        logger.warning(
            "%s has no chat template (tokenizer.chat_template); using ChatML, as llama.cpp does. "
            "Pass --chat-template FILE to use the model's own format.",
            model[0].upper() + model[1:],
        )
        return cls(CHATML_TEMPLATE, name="ChatML (fallback)", is_fallback=True, **kwargs)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages` (OpenAI chat format), ending with the assistant's turn header if
        `add_generation_prompt`. `tools` (OpenAI tool definitions) and `extra` variables go to the template.

        Raises ChatTemplateError for invalid messages and for any failure of the template (see module docstring).
        """
        clash = _RESERVED.intersection(extra)
        if clash:
            raise ChatTemplateError(f"template variable(s) {', '.join(sorted(clash))} cannot be overridden")
        if tools is not None and (isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence)):
            raise ChatTemplateError("tools must be a list of tool objects")
        normalised = _normalise(messages)
        if _has_string_arguments(normalised) and self._wants_object_arguments():
            _decode_arguments(normalised)
        context: dict[str, Any] = {
            **extra,
            "messages": normalised,
            "add_generation_prompt": bool(add_generation_prompt),
            "tools": [dict(t) if isinstance(t, Mapping) else t for t in tools] if tools is not None else None,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        text = self._render(context, self.limits, [normalised, context["tools"], extra])
        if self.tokenizer_adds_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.tokenizer_adds_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text

    def _render(self, context: dict[str, Any], limits: RenderLimits, inputs: Any) -> str:
        """Run the template on `context` under a budget; every failure becomes a ChatTemplateError."""
        input_chars = _text_size(inputs, _MAX_INPUT_CHARS, max_nodes=_MAX_INPUT_VALUES)
        if input_chars > _MAX_INPUT_CHARS:
            raise ChatTemplateError("the messages and tools are too large (or nested) to render")
        budget = _Budget(limits, input_chars)
        token = _ACTIVE.set(budget)
        try:
            chunks: list[str] = []
            for chunk in self._template.generate(context):
                budget.emit(len(chunk))
                chunks.append(chunk)
            return "".join(chunks)
        except _LimitExceeded as exc:
            raise _LimitExceeded(f"chat template {self.name}: {exc}") from None
        except ChatTemplateError:
            raise  # raise_exception(): the template's own message, verbatim
        except SecurityError as exc:
            raise ChatTemplateError(f"chat template {self.name} attempted unsafe access: {exc}") from exc
        except UndefinedError as exc:
            raise ChatTemplateError(f"chat template {self.name} used an undefined value: {exc}") from exc
        except RecursionError:
            raise ChatTemplateError(f"chat template {self.name} recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError(f"chat template {self.name} ran out of memory") from None
        except Exception as exc:
            raise ChatTemplateError(f"chat template {self.name} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _ACTIVE.reset(token)

    def _wants_object_arguments(self) -> bool:
        """Whether tool-call arguments should reach this template as objects rather than JSON strings.

        OpenAI sends arguments as a JSON string; templates written for transformers expect a mapping (they
        `tojson` it or iterate its items), while others concatenate the string. Like llama.cpp (its template
        capability probe), render a probe conversation both ways, once, and pass objects only when the template
        shows an object's key but does not print a string's JSON as such.
        """
        if self._object_arguments is None:
            outputs = [self._probe(args) for args in (json.dumps(_PROBE_ARGUMENTS), dict(_PROBE_ARGUMENTS))]
            key = next(iter(_PROBE_ARGUMENTS))
            string_ok = outputs[0] is not None and (f'"{key}":' in outputs[0] or f"'{key}':" in outputs[0])
            self._object_arguments = not string_ok and outputs[1] is not None and key in outputs[1]
        return self._object_arguments

    def _probe(self, arguments: Any) -> str | None:
        call = {"id": "call_1", "type": "function", "function": {"name": "probe_tool", "arguments": arguments}}
        messages = [
            {"role": "user", "content": "probe"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        context = {
            "messages": messages,
            "add_generation_prompt": False,
            "tools": None,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._render(context, _PROBE_LIMITS, messages)
        except ChatTemplateError:
            return None

    def verify(self) -> None:
        """Render a one-message conversation (as llama.cpp checks a template at start-up); raises on failure."""
        self.render([{"role": "user", "content": "test"}])

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, is_fallback={self.is_fallback})"
