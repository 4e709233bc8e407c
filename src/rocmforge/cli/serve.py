"""`rocmforge serve`: the OpenAI-compatible server on uvicorn, with a graceful drain on SIGTERM / SIGINT.

First signal: the engine stops taking requests (they get 503), in-flight ones finish until --shutdown-timeout,
the rest are aborted (their streams end with finish_reason "abort"), and the process exits 0. A second
signal moves the deadline to now: everything still running is aborted at once.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from rocmforge.cli.options import add_device_option, add_dtype_option
from rocmforge.engine.config import EngineConfig, GiB
from rocmforge.errors import ConfigError
from rocmforge.hub import DEFAULT_MODEL, resolve_model

if TYPE_CHECKING:
    from rocmforge.server.state import ServerConfig


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI API",
        description="Serve MODEL (a named model or a GGUF path) over an OpenAI-compatible HTTP API.",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    add_dtype_option(parser)
    add_device_option(parser)
    parser.add_argument("--max-num-seqs", type=int, default=64, help="requests in the running batch (default: 64)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tokens per step (default: 2048)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length cap (default: the model's)")
    parser.add_argument("--kv-cache-memory", type=float, default=1.0, help="GiB of KV cache on the CPU (default: 1)")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache blocks (overrides the sizing)")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="this engine's share of the GPU's memory: weights, activations and KV cache (as vLLM)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="accepted bearer token; repeat for several (default: $ROCMFORGE_API_KEY, comma-separated; none: open)",
    )
    parser.add_argument("--max-queued-requests", type=int, default=256, help="queued beyond the batch; more get 429")
    parser.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM (default: 30)"
    )
    parser.add_argument("--chat-template", default=None, help="a Jinja chat template file overriding the model's")
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: MODEL's name)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=run)


def server_config(args: argparse.Namespace) -> ServerConfig:
    from rocmforge.server.chat_template import ChatTemplate, load_template_file
    from rocmforge.server.state import ServerConfig  # the server's imports (FastAPI, ...) only for `serve`

    keys = args.api_key or [k for k in os.environ.get("ROCMFORGE_API_KEY", "").split(",") if k]
    if args.chat_template is not None:
        # Compiled now, so a broken template fails in a second with its line number, not after the model loads.
        ChatTemplate(load_template_file(args.chat_template), bos_token="", eos_token="", name=args.chat_template)
    if args.kv_cache_memory <= 0:
        raise ConfigError("--kv-cache-memory must be > 0")
    engine = EngineConfig(
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        kv_cache_memory=int(args.kv_cache_memory * GiB),
        num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    if args.max_queued_requests < 0 or args.shutdown_timeout < 0:
        raise ConfigError("--max-queued-requests and --shutdown-timeout must be >= 0")
    served_name = args.served_model_name or args.model.rsplit("/", 1)[-1].removesuffix(".gguf")
    return ServerConfig(
        model=str(resolve_model(args.model)),
        engine=engine,
        served_model_name=served_name,
        api_keys=tuple(keys),
        max_queued_requests=args.max_queued_requests,
        shutdown_timeout=args.shutdown_timeout,
        chat_template=args.chat_template,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from rocmforge.server.app import create_app
    from rocmforge.server.draining_server import DrainingServer

    config = server_config(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    server = DrainingServer(
        uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
    )
    server.run()
    return server.exit_code
