"""`rocmforge chat`: an interactive multi-turn chat in the terminal, through the model's chat template.

One engine serves the whole session. Its asyncio event loop belongs to the main thread but only runs while a
reply streams (``run_until_complete``); between replies the main thread reads the next line with ``input()``, so
readline editing works and Ctrl-C there has Python's default effect (exit 130). During a reply, and only then,
SIGINT is routed to the loop, where it cancels the consuming task: that aborts the engine request and the prompt
returns. This is llama-cli's behaviour: Ctrl-C interrupts the reply in progress, and at the prompt it exits with
130 without asking.

An interrupted reply stays in the conversation as far as it got (llama-cli keeps it in its context and closes it
with an end-of-turn token; the chat template closes it here), so the model sees what the user saw. A reply
interrupted before its first token is dropped together with the message it answered, as if never sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from rocmforge.cli.options import add_device_option, add_dtype_option
from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.config import EngineConfig
from rocmforge.errors import ValidationError
from rocmforge.hub import DEFAULT_MODEL, resolve_model
from rocmforge.sampling_params import SamplingParams
from rocmforge.server.chat_template import ChatTemplate, load_template_file

T = TypeVar("T")
Message = dict[str, str]

HELP = """commands:
  /reset        start a new conversation (the system message stays)
  /system TEXT  set the system message (/system alone removes it)
  /exit         leave (so do /quit, end of input and Ctrl-D)
  /help         this list
end a line with \\ to continue the message on the next line; start it with // to send a line beginning with /
Ctrl-C interrupts a reply; at the prompt it exits"""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with MODEL (a named model or a GGUF path) in the terminal: each line of standard input "
        "is a message, each reply is generated from the whole conversation rendered with the model's chat "
        "template and streamed to standard output. Commands: /reset, /system TEXT, /exit, /help. Ctrl-C "
        "interrupts a reply; at the prompt it exits. When the conversation no longer leaves room for a reply, "
        "the oldest turns are dropped (the system message stays).",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    add_dtype_option(parser)
    add_device_option(parser)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding (default: 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95, help="1 disables (default: 0.95)")
    parser.add_argument("--top-k", type=int, default=40, help="0 disables (default: 40)")
    parser.add_argument("--min-p", type=float, default=0.05, help="0 disables (default: 0.05)")
    parser.add_argument(
        "--max-tokens",
        "-n",
        type=int,
        default=None,
        help="most tokens per reply (default: until the end of the turn or of the context)",
    )
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--system", default=None, metavar="TEXT", help="the system message")
    parser.add_argument("--chat-template", default=None, metavar="FILE", help="a Jinja chat template file")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length cap (default: the model's)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no speed line after replies")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before the model loads, so the mistake costs no time.
    if sys.stdin is None:
        raise ValidationError("rocmforge chat reads messages from standard input, and there is none")
    params = SamplingParams(
        max_tokens=args.max_tokens if args.max_tokens is not None else 1,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
    )
    if args.chat_template is not None:
        ChatTemplate(load_template_file(args.chat_template), bos_token="", eos_token="", name=args.chat_template)
    config = EngineConfig(
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=1,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
    )
    path = resolve_model(args.model, progress=not args.quiet)
    loop = asyncio.new_event_loop()
    llm = AsyncLLM(path, config, progress=not args.quiet)
    try:
        run_interruptible(loop, llm.start())
        core = llm.engine.core
        template = ChatTemplate.from_tokenizer(
            llm.tokenizer,
            override=Path(args.chat_template) if args.chat_template is not None else None,
            model_arch=core.model.config.arch if core is not None else None,
        )
        session = ChatSession(llm, loop, template, params, args)
        return session.run()
    finally:
        _close(loop, llm)


def _close(loop: asyncio.AbstractEventLoop, llm: AsyncLLM) -> None:
    """Shut the engine down and close the loop; a Ctrl-C now would only leave the engine thread mid-step."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nobody can send us its SIGINT anyway
        previous = None
    try:
        loop.run_until_complete(llm.shutdown(0))  # nothing is in flight: any reply was finished or aborted
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_interruptible(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on `loop`; a Ctrl-C meanwhile cancels it, and KeyboardInterrupt is raised once it unwound.

    Cancelling (rather than letting KeyboardInterrupt strike wherever the main thread happens to be) is what
    makes AsyncLLM.generate abort the engine request in its ``finally``.
    """
    task = loop.create_task(coroutine)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        handled = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals in this loop
        handled = False
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)  # back to Python's default: KeyboardInterrupt at the prompt


@dataclasses.dataclass
class Conversation:
    """The system message and the turns: user and assistant messages alternating, ending with a user message
    while a reply is being generated."""

    system: str | None = None
    turns: list[Message] = dataclasses.field(default_factory=list)

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.turns


def fit_prompt(
    conversation: Conversation,
    render: Callable[[list[Message]], str],
    encode: Callable[[str], list[int]],
    max_model_len: int,
    reserve: int,
) -> tuple[list[int], int]:
    """The conversation's prompt tokens, after dropping its oldest turns (in place) until `reserve` tokens are
    left for the reply; returns (prompt ids, turns dropped). The system message and the last user message are
    never dropped: when only they remain, the reply gets what room is left, and if there is none, ValidationError.
    """
    dropped = 0
    while True:
        ids = encode(render(conversation.messages()))
        if len(ids) + reserve <= max_model_len:
            return ids, dropped
        if len(conversation.turns) <= 1:
            if len(ids) < max_model_len:
                return ids, dropped
            raise ValidationError(
                f"the conversation is {len(ids)} tokens with only this message left in it; "
                f"the context holds {max_model_len}: send a shorter message (or a shorter /system)"
            )
        del conversation.turns[:2]  # the oldest user message and the reply to it
        dropped += 1


@dataclasses.dataclass
class Reply:
    """A reply as it streams; filled in place, so that an interrupted one still tells how far it got."""

    prompt_tokens: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    start: float = dataclasses.field(default_factory=time.monotonic)
    first: float | None = None
    last: float | None = None

    def speed_line(self, max_model_len: int, interrupted: bool) -> str:
        parts = [f"{self.tokens} token{'' if self.tokens == 1 else 's'}"]
        if self.first is not None and self.last is not None:
            # Decode speed: the first token's time is the prompt's, so it is counted apart.
            decode = (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0
            parts += [f"{decode:.1f} tok/s", f"first token {self.first - self.start:.2f} s"]
        parts.append(f"context {self.prompt_tokens + self.tokens}/{max_model_len}")
        if interrupted:
            parts.insert(0, "interrupted")
        elif self.finish_reason == "length":
            parts.append("cut at the token limit")
        return "[" + ", ".join(parts) + "]"


class ChatSession:
    def __init__(
        self,
        llm: AsyncLLM,
        loop: asyncio.AbstractEventLoop,
        template: ChatTemplate,
        params: SamplingParams,
        args: argparse.Namespace,
    ) -> None:
        self.llm = llm
        self.event_loop = loop
        self.template = template
        self.params = params
        self.max_tokens: int | None = args.max_tokens
        self.quiet: bool = args.quiet
        self.conversation = Conversation(system=args.system)
        self.stdin: TextIO = sys.stdin
        self.interactive = self.stdin.isatty()
        if self.interactive:
            with contextlib.suppress(ImportError):  # line editing and history for input(), where available
                import readline  # noqa: F401

    def run(self) -> int:
        if self.interactive:
            _notice("type a message, or /help")
        while True:
            line = read_message(self.stdin, self.interactive)
            if line is None:
                if self.interactive:
                    print()  # Ctrl-D leaves the cursor after the prompt
                return 0
            if not line.strip():
                continue
            if line.startswith("//"):
                self.reply(line[1:])
            elif line.startswith("/"):
                if self.command(line):
                    return 0
            else:
                self.reply(line)

    def command(self, line: str) -> bool:
        """Run a /command; True when it is time to leave."""
        name, _, rest = line.partition(" ")
        name = name.strip()
        if name in ("/exit", "/quit"):
            return True
        if name == "/reset":
            self.conversation.turns.clear()
            _notice("[new conversation]")
        elif name == "/system":
            text = rest.strip()
            self.conversation.system = text or None
            _notice("[system message set]" if text else "[system message removed]")
        elif name == "/help":
            _notice(HELP)
        else:
            _notice(f"unknown command {name}: try /help (/reset, /system TEXT, /exit)")
        return False

    def reply(self, text: str) -> None:
        conversation = self.conversation
        conversation.turns.append({"role": "user", "content": text})
        max_len = self.llm.max_model_len
        # Room kept free for the reply when the conversation has to shrink: --max-tokens, or a quarter of the
        # context when replies run until the end of the turn (half the context at most, so history survives).
        reserve = min(self.max_tokens, max_len // 2) if self.max_tokens is not None else max_len // 4
        try:
            prompt_ids, dropped = fit_prompt(conversation, self.render, self.encode, max_len, reserve)
        except ValidationError as exc:  # a template error or an oversized message: this message is not sent
            conversation.turns.pop()
            print(f"rocmforge: error: {exc}", file=sys.stderr)
            return
        if dropped:
            _notice(
                f"[context full: dropped the {dropped} oldest turns]"
                if dropped > 1
                else "[context full: dropped the oldest turn]"
            )
        room = max_len - len(prompt_ids)
        max_tokens = min(self.max_tokens, room) if self.max_tokens is not None else room
        params = dataclasses.replace(self.params, max_tokens=max_tokens)
        reply = Reply(len(prompt_ids))
        interrupted = False
        try:
            run_interruptible(self.event_loop, self.stream(prompt_ids, params, reply))
        except KeyboardInterrupt:
            interrupted = True
        sys.stdout.write("\n")
        sys.stdout.flush()
        if interrupted and not reply.tokens:
            conversation.turns.pop()  # nothing came back: as if the message was never sent
        else:
            conversation.turns.append({"role": "assistant", "content": reply.text})
        if not self.quiet:
            print(reply.speed_line(max_len, interrupted), file=sys.stderr, flush=True)
        elif interrupted:
            _notice("[interrupted]")

    def render(self, messages: list[Message]) -> str:
        return self.template.render(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        # As the server's chat_prompt_ids (and llama-server): special tokens added and parsed in the text.
        return self.llm.tokenizer.encode(text, add_special=True, parse_special=True)

    async def stream(self, prompt_ids: list[int], params: SamplingParams, reply: Reply) -> None:
        reply.start = time.monotonic()
        async for output in self.llm.generate(prompt_ids, params):
            sample = output.outputs[0]
            now = time.monotonic()
            if sample.token_ids and reply.first is None:
                reply.first = now
            reply.last = now
            reply.text += sample.text
            reply.tokens += len(sample.token_ids)
            reply.finish_reason = sample.finish_reason
            sys.stdout.write(sample.text)
            sys.stdout.flush()


def read_message(stdin: TextIO, interactive: bool) -> str | None:
    """The next message: one line, or several joined where a line ends with a backslash (as llama-cli's
    multi-line input). None at the end of input. Interactive input goes through input() for readline editing."""
    lines: list[str] = []
    while True:
        if interactive:
            try:
                line = input("> " if not lines else ". ")
            except EOFError:
                return "\n".join(lines) if lines else None
        else:
            raw = stdin.readline()
            if not raw:
                return "\n".join(lines) if lines else None
            line = raw.rstrip("\r\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def _notice(text: str) -> None:
    # Notices go to standard error, so that standard output carries nothing but the replies.
    print(text, file=sys.stderr, flush=True)
