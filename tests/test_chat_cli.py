"""`rocmforge chat`: the conversation logic on its own, and the command as a user runs it (a real subprocess on
smollm2-135m, greedy, with a piped script of lines and real signals)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys

import pytest

from rocmforge.cli.chat import Conversation, Reply, fit_prompt, read_message
from rocmforge.cli.main import main
from rocmforge.errors import ValidationError
from rocmforge.server.chat_template import CHATML_TEMPLATE, ChatTemplate

COMMAND = [sys.executable, "-m", "rocmforge", "chat", "smollm2-135m", "--temperature", "0"]
# One thread: the machine's few cores are shared, and torch's threads spinning against other processes' made
# each run several times slower. Every run here uses the same setting, so greedy outputs compare exactly.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
CONTEXT = 128  # small, so that a few turns fill it
QUESTION = "What is 2+2?\n"
# "[12 tokens, 61.6 tok/s, first token 0.03 s, context 49/128]": the reply's tokens and the context it filled.
SPEED_LINE = re.compile(r"^\[(?:interrupted, )?(\d+) tokens?, .*context (\d+)/\d+.*\]$", re.MULTILINE)


def chat(script: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--max-tokens", "16", "--max-model-len", str(CONTEXT), *options],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def popen(*options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def turns(stderr: str) -> list[tuple[int, int]]:
    """(prompt tokens, reply tokens) of each reply, from the speed lines."""
    return [(int(context) - int(tokens), int(tokens)) for tokens, context in SPEED_LINE.findall(stderr)]


def assert_clean(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- without a model


def chatml() -> ChatTemplate:
    return ChatTemplate(CHATML_TEMPLATE, bos_token="", eos_token="", name="chatml")


def conversation(n_turns: int) -> Conversation:
    turns: list[dict[str, str]] = []
    for i in range(n_turns):
        turns += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    return Conversation(system="be brief", turns=[*turns, {"role": "user", "content": "last"}])


def test_fit_prompt_drops_oldest_turns_and_keeps_the_system_message() -> None:
    template, encode = chatml(), list  # one "token" per character
    whole = len(template.render(conversation(3).messages()))
    conv = conversation(3)
    ids, dropped = fit_prompt(conv, template.render, encode, max_model_len=whole + 10, reserve=10)
    assert (len(ids), dropped) == (whole, 0)  # fits exactly: nothing dropped
    conv = conversation(3)
    ids, dropped = fit_prompt(conv, template.render, encode, max_model_len=whole + 10, reserve=11)
    assert dropped == 1
    assert [m["content"] for m in conv.messages()] == [
        "be brief",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
        "last",
    ]
    assert len(ids) == len(template.render(conv.messages()))


def test_fit_prompt_keeps_the_last_message_while_it_fits_and_refuses_it_once_it_does_not() -> None:
    template, encode = chatml(), list
    alone = len(template.render(conversation(0).messages()))
    conv = conversation(2)
    ids, dropped = fit_prompt(conv, template.render, encode, max_model_len=alone + 1, reserve=100)
    assert (len(ids), dropped) == (alone, 2)  # no room for the reserve, but for one token: it may reply
    assert [m["role"] for m in conv.messages()] == ["system", "user"]
    with pytest.raises(ValidationError, match="context holds"):
        fit_prompt(conversation(1), template.render, encode, max_model_len=alone, reserve=1)


def test_read_message_joins_continued_lines_and_returns_none_at_eof() -> None:
    stdin = io.StringIO("one\r\ntwo \\\nthree\n\nfour\\\n")
    assert [read_message(stdin, interactive=False) for _ in range(5)] == ["one", "two \nthree", "", "four", None]


def test_speed_line() -> None:
    reply = Reply(prompt_tokens=40, tokens=11, finish_reason="length", start=0.0, first=0.5, last=1.5)
    assert reply.speed_line(100, interrupted=False) == (
        "[11 tokens, 10.0 tok/s, first token 0.50 s, context 51/100, cut at the token limit]"
    )
    assert Reply(prompt_tokens=3).speed_line(8, interrupted=True) == "[interrupted, 0 tokens, context 3/8]"


# ---------------------------------------------------------------------- the command, on a real model


@pytest.fixture(scope="module")
def fresh() -> subprocess.CompletedProcess[str]:
    """One question in a new conversation; input ends without /exit."""
    result = chat(QUESTION)
    assert_clean(result)  # the end of input exits 0
    assert len(turns(result.stderr)) == 1 and result.stdout.strip(), result.stderr
    return result


@pytest.mark.slow
def test_conversation_history_reset_commands_and_a_full_context(fresh: subprocess.CompletedProcess[str]) -> None:
    script = (
        f"Hi there\n{QUESTION}/reset\n/bogus\n{QUESTION}Tell me about Paris.\nAnd London?\nAnd Rome?\n/exit\nnever\n"
    )
    result = chat(script)
    assert_clean(result)
    replies = turns(result.stderr)
    assert len(replies) == 6, result.stderr  # "never" was not sent: /exit left
    (prompt1, reply1), (prompt2, _), (prompt3, _) = replies[:3]
    fresh_prompt = turns(fresh.stderr)[0][0]
    # The second reply was generated from the whole conversation: its prompt holds the first turn, so it is
    # longer than a new conversation's prompt for the same question by more than the first reply.
    assert prompt2 > prompt1 + reply1 and prompt2 > fresh_prompt + reply1
    # After /reset the same question gets what a new conversation gives: the same prompt, the same greedy reply.
    assert prompt3 == fresh_prompt
    assert fresh.stdout in result.stdout
    assert "unknown command /bogus: try /help" in result.stderr
    # Paris, London, Rome: the context fills up, the oldest turns go, and no request ever overflows it.
    assert "[context full: dropped the oldest turn" in result.stderr
    assert all(prompt + reply <= CONTEXT for prompt, reply in replies)


@pytest.mark.slow
def test_system_message(fresh: subprocess.CompletedProcess[str]) -> None:
    # --system TEXT; then /system alone removes it; then /system TEXT sets it again.
    system = "You are a pirate. Answer in pirate speak."
    result = chat(f"{QUESTION}/reset\n/system\n{QUESTION}/reset\n/system {system}\n{QUESTION}", "--system", system)
    assert_clean(result)
    out, plain = result.stdout, fresh.stdout
    pirate = out[: (len(out) - len(plain)) // 2]
    assert out == pirate + plain + pirate, result.stderr  # /system TEXT gives what --system TEXT gives
    assert pirate != plain  # and the reply differs from the one without it
    prompts = [prompt for prompt, _ in turns(result.stderr)]
    assert prompts[0] == prompts[2] != prompts[1] == turns(fresh.stderr)[0][0]


@pytest.mark.slow
def test_ctrl_c_interrupts_the_reply_and_the_chat_goes_on() -> None:
    process = popen("--max-tokens", "2000")
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("Write a very long story about a dragon.\n")
    process.stdin.flush()
    process.stdout.read(1)  # the reply has started: the signal lands while it streams
    process.send_signal(signal.SIGINT)
    process.stdin.write(f"{QUESTION}/exit\n")
    process.stdin.flush()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "[interrupted, " in stderr
    replies = turns(stderr)
    assert len(replies) == 2, stderr
    (prompt1, partial), (prompt2, reply2) = replies
    assert 1 <= partial < 2000 and reply2 >= 1
    assert prompt2 > prompt1 + partial  # the partial reply stayed in the conversation


@pytest.mark.slow
def test_ctrl_c_at_the_prompt_exits_130() -> None:
    process = popen("--max-tokens", "4")
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write("Hi\n")
    process.stdin.flush()
    for line in process.stderr:  # the speed line comes once the reply is over: the chat is back at the prompt
        if SPEED_LINE.match(line.strip()):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--temperature", "-1", "temperature"), ("--chat-template", "/no/such/file", "does not exist")],
)
def test_bad_options_fail_before_loading(
    option: str, value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: main() returns before any model is loaded, so this costs no start-up.
    assert main(["chat", "no-such-model", option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rocmforge: error:") and fragment in err and err.count("\n") == 1
