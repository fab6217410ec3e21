"""``grvl serve``: run the guard server (a guarded OpenAI-compatible proxy, ``/v1/moderations`` and
LiteLLM's guardrail API; see ``docs/server.md``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from grvl_sdk._constants import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, MODEL_ENV_VAR
from grvl_sdk.errors import GRVLError, InputError

__all__ = ["EXIT_INPUT", "EXIT_LOAD", "register"]

EXIT_INPUT = 2
EXIT_LOAD = 3
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the guard: guarded OpenAI proxy, /v1/moderations, LiteLLM guardrail API",
        description="Serve a GuardReasoner-VL guard over HTTP: a guarded proxy in front of an OpenAI-compatible "
        "model server (--upstream), OpenAI's /v1/moderations and LiteLLM's Generic Guardrail API.",
        epilog=f"The guard runs locally (--model, default ${MODEL_ENV_VAR} or {DEFAULT_MODEL}) or on a guard "
        "server (--guard-server). API keys for the guard's own endpoints are read from $GRVL_SERVER_API_KEYS "
        "(comma-separated) or the config file, never from the command line. See docs/server.md.",
    )
    parser.add_argument("--upstream", help="the guarded model's OpenAI-compatible API root, e.g. http://host:8001/v1")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"guard checkpoint: hub id or folder (default: ${MODEL_ENV_VAR} or "
                        f"{DEFAULT_MODEL})")  # fmt: skip
    source.add_argument("--guard-server", metavar="URL", help="a server hosting the guard (vLLM, SGLang), .../v1")
    parser.add_argument("--guard-model", help="the guard server's model name (default: its only model)")
    parser.add_argument(
        "--quantization",
        choices=["auto", "none", "4bit", "8bit"],
        default="auto",
        help="bitsandbytes quantisation of a local guard (auto: 4bit on CUDA, none on CPU)",
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float16 or float32")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="local guard: static KV cache + torch.compile of the decode step, compiled while loading "
        "(--quantization auto then loads unquantised)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"longest guard output in tokens (default {DEFAULT_MAX_NEW_TOKENS})")  # fmt: skip
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--config", help="server settings file (.json, .toml, .yaml): see docs/server.md")
    parser.add_argument("--block-style", choices=["refusal", "error"], help="how the proxy answers blocks")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--print-config", action="store_true", help="print the settings (keys hidden) and exit")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from grvl_sdk.server.config import ServerConfig

    overrides = {name: value for name, value in (("upstream", args.upstream), ("host", args.host),
                 ("port", args.port), ("block_style", args.block_style)) if value is not None}  # fmt: skip
    config = ServerConfig.from_file(args.config, **overrides) if args.config else ServerConfig(**overrides)
    return config.with_env_keys()


def _logging(fmt: str, level: str) -> None:
    from grvl_sdk.server.access import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))  # fmt: skip
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the server writes its own access log
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _guard_models(url: str) -> list[str]:
    """The models a guard server serves (``GET {url}/models``); :class:`InputError` when it cannot be
    reached or does not answer a model list."""
    import httpx

    try:
        answer = httpx.get(url.rstrip("/") + "/models", timeout=10, headers=_bearer(), trust_env=False)
        answer.raise_for_status()
        return [str(m["id"]) for m in answer.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except httpx.HTTPStatusError as exc:
        raise InputError(
            f"the guard server at {url} answered HTTP {exc.response.status_code} to GET /models "
            "(is it an OpenAI-compatible API root ending in /v1? is $GRVL_API_KEY right?)"
        ) from exc
    except httpx.HTTPError as exc:
        raise InputError(f"cannot reach the guard server at {url}: {type(exc).__name__}: {exc}") from exc
    except (ValueError, AttributeError, TypeError) as exc:
        raise InputError(f"the guard server at {url} did not answer a model list to GET /models") from exc


def _guard_model(url: str, wanted: str | None) -> str:
    """The guard server's model: ``wanted`` when it is served, else its only model."""
    names = _guard_models(url)
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"the guard server at {url} does not serve {wanted!r} (it serves {names[:10]})")
        return wanted
    if len(names) != 1:
        raise InputError(f"the guard server serves {len(names)} models ({names[:10]}); choose one with --guard-model")
    return names[0]


def _probe_upstream(url: str, log: logging.Logger) -> bool:
    """Whether the upstream answers at all (any HTTP status counts: it may want the callers' keys); logs a
    warning naming the problem when it does not."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/models", timeout=5, trust_env=False)
    except httpx.HTTPError as exc:
        log.warning("cannot reach the upstream at %s (%s: %s): the proxy endpoints answer 502 "
                    "upstream_unavailable until it answers", url, type(exc).__name__, exc)  # fmt: skip
        return False
    return True


def _bearer() -> dict[str, str]:
    key = os.environ.get("GRVL_API_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except GRVLError as exc:
        print(f"grvl serve: error: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    if args.print_config:
        import json

        print(json.dumps(config.public(), indent=2))
        return 0
    from grvl_sdk.cli._output import quiet_third_party
    from grvl_sdk.guard import Guard
    from grvl_sdk.server import create_app, serve

    quiet_third_party(args.log_level == "debug")  # no progress bars between log lines unless debugging
    # the guard first: a guard server that cannot be reached, or a checkpoint that cannot be found, stops here
    source: Any
    try:
        if args.guard_server:
            name = _guard_model(args.guard_server, args.guard_model)
            source = Guard.from_server(args.guard_server, model=name, max_new_tokens=args.max_new_tokens)
            where = f"guard: {name} on {args.guard_server}"
        else:
            from grvl_sdk.backends._loading import resolve_model

            model = args.model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
            resolve_model(model, advice="pass a local checkpoint folder with --model")

            def source() -> Guard:  # loaded on a thread once the server listens: /ready says when
                from grvl_sdk.cli.check import _quantization

                return Guard.from_pretrained(model, quantization=_quantization(args.quantization, compile=args.compile),
                                             device=args.device, dtype=args.dtype, compile=args.compile,
                                             max_new_tokens=args.max_new_tokens)  # fmt: skip

            where = f"loading the guard {model} in the background; /ready answers 200 once it is loaded"
    except GRVLError as exc:
        print(f"grvl serve: error: {exc.message}", file=sys.stderr)
        return EXIT_LOAD

    _logging(args.log_format, args.log_level)
    log = logging.getLogger("grvl_sdk.server")
    if config.upstream is None:
        log.warning("no --upstream: the proxy endpoints answer 503; /v1/moderations and the LiteLLM API work")
    else:
        _probe_upstream(config.upstream, log)
    if config.host not in _LOOPBACK and not config.api_keys:
        log.warning("listening on %s without API keys: anyone who reaches it can use the guard's endpoints",
                    config.host)  # fmt: skip
    log.info("%s", where)
    app = create_app(source, config=config)
    log.info("serving on http://%s:%d (upstream: %s)", config.host, config.port, config.upstream or "none")
    load_error = serve(app, host=config.host, port=config.port, shutdown_timeout=config.shutdown_timeout,
                       keep_alive_timeout=config.keep_alive_timeout, log_level=args.log_level)  # fmt: skip
    if load_error:
        print(f"grvl serve: error: the guard could not be loaded: {load_error}", file=sys.stderr)
        return EXIT_LOAD
    return 0
