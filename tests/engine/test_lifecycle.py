"""Races and lifecycle of the threaded engine, timed by hooks and events at the loop's start, steps and drain
(never by sleeps): every request is served or refused with a clear error, none is lost or hangs, and
shutdown leaves no thread, file descriptor, mapping or KV block behind."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rocmforge import AsyncLLM, EngineConfig, SamplingParams
from rocmforge.engine.engine_loop import EngineHooks, EngineLoop
from rocmforge.engine.lifecycle import EngineState
from rocmforge.engine.model_source import ModelSource
from rocmforge.engine.outputs import EngineCoreOutput, RequestOutput
from rocmforge.errors import EngineDeadError, EngineNotRunningError
from rocmforge.hub import resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
CONFIG = EngineConfig(dtype="f32", max_num_seqs=64, num_kv_blocks=512)
SHORT = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
PROMPT = "The capital of France is"


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rocmforge-engine")]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def mapped(path: Path) -> int:
    with open("/proc/self/maps") as maps:
        return sum(str(path) in line for line in maps)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


async def collect(
    llm: AsyncLLM, prompt: str = PROMPT, params: SamplingParams = SHORT, **kwargs: object
) -> RequestOutput:
    """Consume a stream; return its last output with the whole text and token ids joined in."""
    text, token_ids, last = [], [], None
    async for output in llm.generate(prompt, params, **kwargs):  # type: ignore[arg-type]
        text.append(output.outputs[0].text)
        token_ids.extend(output.outputs[0].token_ids)
        last = output
    assert last is not None and last.finished
    last.outputs[0].text, last.outputs[0].token_ids = "".join(text), token_ids
    return last


class LoopSignals:
    """Hooks that report the loop's progress to the event loop, and can hold the loop at a chosen point."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.steps = 0
        self.step_done = asyncio.Condition()
        self.hold_step = threading.Event()
        self.hold_step.set()  # set: steps run freely
        self.in_step = asyncio.Event()
        self.fail_at_step: int | None = None
        self.hooks = EngineHooks(before_step=self._before_step, after_step=self._after_step)

    def _before_step(self) -> None:
        if self.fail_at_step is not None and self.steps + 1 >= self.fail_at_step:
            raise RuntimeError("injected failure inside a step")
        self.loop.call_soon_threadsafe(self.in_step.set)
        self.hold_step.wait()

    def _after_step(self) -> None:
        self.steps += 1
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))

    async def _notify(self) -> None:
        async with self.step_done:
            self.step_done.notify_all()

    async def wait_steps(self, count: int) -> None:
        """Wait until ``count`` more steps have completed."""
        target = self.steps + count
        async with self.step_done:
            await self.step_done.wait_for(lambda: self.steps >= target)


def test_submit_before_start_is_refused_then_served_after_start() -> None:
    async def main() -> None:
        llm = AsyncLLM(MODEL, CONFIG)
        with pytest.raises(EngineNotRunningError, match="not started"):
            await collect(llm)
        async with llm:
            assert llm.state is EngineState.READY
            output = await collect(llm)
            assert output.outputs[0].finish_reason == "length" and len(output.outputs[0].token_ids) == 4
        assert llm.state is EngineState.STOPPED

    run(main)


def test_submit_during_start_is_served_once_ready() -> None:
    release = threading.Event()

    async def main() -> None:
        llm = AsyncLLM(MODEL, CONFIG, hooks=EngineHooks(on_loop_start=release.wait))
        start = asyncio.create_task(llm.start())
        await asyncio.sleep(0)  # let start() launch the thread (it then waits on the hook)
        assert llm.state is EngineState.STARTING
        early = asyncio.create_task(collect(llm))
        await asyncio.sleep(0)
        assert not early.done()
        release.set()
        await start
        output = await early
        assert output.outputs[0].finish_reason == "length"
        await llm.shutdown()

    run(main)


def test_requests_during_shutdown_are_refused_and_in_flight_ones_finish() -> None:
    async def main() -> None:
        signals = LoopSignals()
        llm = AsyncLLM(MODEL, CONFIG, hooks=signals.hooks)
        await llm.start()
        streams = [
            asyncio.create_task(collect(llm, params=SamplingParams(max_tokens=24, ignore_eos=True, seed=i)))
            for i in range(16)
        ]
        await signals.wait_steps(1)
        shutdown = asyncio.create_task(llm.shutdown(timeout=120))
        await asyncio.sleep(0)  # shutdown() has run up to its first await: the engine is draining
        assert llm.state is EngineState.DRAINING
        with pytest.raises(EngineNotRunningError, match="draining"):
            await collect(llm)
        outputs = await asyncio.gather(*streams)
        await shutdown
        assert all(o.outputs[0].finish_reason == "length" and len(o.outputs[0].token_ids) == 24 for o in outputs)
        assert llm.state is EngineState.STOPPED and not engine_threads()

    run(main)


def test_shutdown_timeout_aborts_what_is_still_running() -> None:
    async def main() -> None:
        signals = LoopSignals()
        llm = AsyncLLM(MODEL, CONFIG, hooks=signals.hooks)
        await llm.start()
        streams = [asyncio.create_task(collect(llm, params=LONG)) for _ in range(4)]
        await signals.wait_steps(2)
        await llm.shutdown(timeout=0)
        outputs = await asyncio.gather(*streams)
        assert [o.outputs[0].finish_reason for o in outputs] == ["abort"] * 4
        assert all(0 < len(o.outputs[0].token_ids) < LONG.max_tokens for o in outputs)
        assert llm.stats.kv_cache_usage == 0.0
        await llm.shutdown()  # idempotent
        assert llm.state is EngineState.STOPPED

    run(main)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_abort_frees_the_request_within_one_step(phase: str) -> None:
    async def main() -> None:
        signals = LoopSignals()
        llm = AsyncLLM(MODEL, CONFIG, hooks=signals.hooks)
        await llm.start()
        signals.hold_step.clear()
        signals.in_step.clear()
        stream = asyncio.create_task(collect(llm, PROMPT * 20, LONG, request_id="victim"))
        await signals.in_step.wait()  # the loop is inside the victim's prefill step, held there
        if phase == "decode":
            signals.hold_step.set()
            await signals.wait_steps(3)
        await llm.abort("victim")
        signals.hold_step.set()
        output = await stream
        assert output.outputs[0].finish_reason == "abort"
        assert len(output.outputs[0].token_ids) < LONG.max_tokens
        assert llm.stats.kv_cache_usage == 0.0 and llm.stats.num_running == 0
        await llm.shutdown()

    run(main)


def test_cancelled_consumer_aborts_its_request() -> None:
    async def main() -> None:
        signals = LoopSignals()
        llm = AsyncLLM(MODEL, CONFIG, hooks=signals.hooks)
        await llm.start()
        first_output = asyncio.Event()

        async def consume() -> None:
            async for _ in llm.generate(PROMPT, LONG):
                first_output.set()

        task = asyncio.create_task(consume())
        await first_output.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other = await collect(llm)  # the next request's steps run after the abort was taken in
        assert other.outputs[0].finish_reason == "length"
        assert llm.stats.kv_cache_usage == 0.0 and llm.stats.num_running == 0
        await llm.shutdown()

    run(main)


def test_200_concurrent_tasks_all_served() -> None:
    async def main() -> None:
        async with AsyncLLM(MODEL, CONFIG) as llm:
            prompts = [f"Item {i}: the number {i} is" for i in range(200)]
            outputs = await asyncio.gather(*(collect(llm, prompt) for prompt in prompts))
            assert all(o.outputs[0].finish_reason == "length" and len(o.outputs[0].token_ids) == 4 for o in outputs)
            assert [o.prompt for o in outputs] == prompts
            assert llm.stats.kv_cache_usage == 0.0

    run(main)


def test_200_concurrent_threads_submit_to_the_loop() -> None:
    source = ModelSource(MODEL, CONFIG)
    inboxes: dict[str, queue.SimpleQueue[EngineCoreOutput]] = {f"t{i}": queue.SimpleQueue() for i in range(200)}

    def sink(outputs: list[EngineCoreOutput]) -> None:
        for output in outputs:
            inboxes[output.request_id].put(output)

    engine = EngineLoop(source.build_core, sink)
    engine.start()
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def submitter(request_id: str, index: int) -> None:
        try:
            engine.add_request(request_id, [1, 100 + index, 200 + index], SHORT)
            tokens: list[int] = []
            while True:
                output = inboxes[request_id].get(timeout=120)
                tokens.extend(output.new_token_ids)
                if output.finished:
                    results[request_id] = tokens
                    return
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(rid, i)) for i, rid in enumerate(inboxes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = engine.stats
    engine.shutdown()
    assert not errors
    assert sorted(results) == sorted(inboxes) and all(len(tokens) == 4 for tokens in results.values())
    assert stats.kv_cache_usage == 0.0 and not engine_threads()


def test_exception_in_a_step_fails_every_pending_request_and_marks_the_engine_dead() -> None:
    async def main() -> None:
        signals = LoopSignals()
        llm = AsyncLLM(MODEL, CONFIG, hooks=signals.hooks)
        await llm.start()
        signals.fail_at_step = 3
        streams = [asyncio.create_task(collect(llm, params=LONG)) for _ in range(5)]
        results = await asyncio.gather(*streams, return_exceptions=True)
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert llm.state is EngineState.DEAD
        with pytest.raises(EngineDeadError):
            await collect(llm)
        await llm.shutdown()
        await llm.shutdown()
        assert llm.state is EngineState.DEAD and not engine_threads()

    run(main)


def test_logits_processor_steers_only_its_request() -> None:
    async def main() -> None:
        async with AsyncLLM(MODEL, CONFIG) as llm:
            forced = llm.tokenizer.encode(" banana", add_special=False)[0]

            def force(output_ids: list[int], logits):  # type: ignore[no-untyped-def]
                steered = logits.clone().fill_(float("-inf"))
                steered[forced] = 0.0
                return steered

            plain, steered, plain_again = await asyncio.gather(
                collect(llm), collect(llm, logits_processors=(force,)), collect(llm)
            )
            assert steered.outputs[0].token_ids == [forced] * 4
            assert plain.outputs[0].token_ids == plain_again.outputs[0].token_ids != [forced] * 4

    run(main)


def test_two_engines_on_one_file_at_once_and_one_after_another() -> None:
    path = resolve_model(MODEL)
    threads_before, fds_before, maps_before = engine_threads(), open_fds(), mapped(path)

    async def main() -> None:
        first, second = AsyncLLM(path, CONFIG), AsyncLLM(path, CONFIG)
        await asyncio.gather(first.start(), second.start())
        a, b = await asyncio.gather(collect(first), collect(second))
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        await asyncio.gather(first.shutdown(), second.shutdown())
        async with AsyncLLM(path, CONFIG) as third:
            c = await collect(third)
        assert c.outputs[0].token_ids == a.outputs[0].token_ids

    run(main)
    assert engine_threads() == threads_before == []
    assert open_fds() == fds_before
    assert mapped(path) == maps_before == 0


def test_startup_failure_is_reported_and_leaves_nothing_running(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)

    async def main() -> None:
        llm = AsyncLLM(broken, CONFIG)
        with pytest.raises(EngineDeadError, match="failed to start"):
            await llm.start()
        with pytest.raises(EngineDeadError):
            await collect(llm)
        await llm.shutdown()

    run(main)
    assert not engine_threads()
