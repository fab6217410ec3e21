"""``ServerConfig``: every setting of ``grvl serve`` in one frozen, validated model.

Built from keyword arguments, from a file (:meth:`ServerConfig.from_file`: JSON, TOML, or YAML when
PyYAML is installed) and from the command line (which overrides the file). Mistakes raise
:class:`~grvl_sdk.errors.InputError` naming the field. API keys are never printed: ``repr`` and
:meth:`ServerConfig.public` hide them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from grvl_sdk._constants import MAX_IMAGES_PER_CHECK
from grvl_sdk._validation import SettingsModel
from grvl_sdk.errors import InputError
from grvl_sdk.policy import Policy

__all__ = ["API_KEYS_ENV", "DEFAULT_FORWARD_HEADERS", "ServerConfig"]

#: Environment variable holding the server's own API keys (comma-separated), read by ``grvl serve``.
API_KEYS_ENV = "GRVL_SERVER_API_KEYS"
#: Request headers passed on to the upstream (the caller's credentials and OpenAI routing headers).
DEFAULT_FORWARD_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project", "openai-beta")
_MiB = 1024 * 1024


class ServerConfig(SettingsModel):
    """Settings of the guard server (see ``docs/server.md`` for each one's meaning and default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- where ------------------------------------------------------------------------------------
    #: The guarded model's OpenAI-compatible API root, as for the OpenAI client (``http://host:port/v1``).
    #: ``None``: the proxy endpoints answer 503; moderation and LiteLLM endpoints still work.
    upstream: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # -- what the guard does ----------------------------------------------------------------------
    #: Policy fields (``mode``, ``on_error``, ``check``, ``refusal``, ``deadline``, ``stream_mode``,
    #: ``stream_check_every``, ``max_new_tokens``); ``on_block`` is always ``"refuse"`` here.
    policy: dict[str, Any] = Field(default_factory=dict)
    #: How a block is answered on the proxy: ``refusal`` (the OpenAI shape, ``finish_reason="content_filter"``
    #: / ``status="incomplete"``) or ``error`` (an OpenAI error object, HTTP 400; an error event in a stream).
    block_style: Literal["refusal", "error"] = "refusal"
    #: Seconds for one guard check (queueing included) when the policy sets no ``deadline``; on expiry
    #: the fail mode (``on_error``) applies.
    guard_deadline: float | None = Field(default=60.0, gt=0, allow_inf_nan=False)
    #: Judge the earlier turns of a chat that the guard's context window (``context_chars``) leaves out, in
    #: extra checks run alongside the request check (see ``grvl_sdk.server.history``).
    history_checks: bool = True
    #: ``/v1/moderations``: the categories the guard's (binary) judgement is reported under.
    moderation_categories: tuple[str, ...] = ("harmful",)

    # -- who may call -----------------------------------------------------------------------------
    #: Keys for the guard's own endpoints (``/v1/moderations``, the LiteLLM endpoint, ``/metrics``), sent
    #: as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``. Empty: no key needed.
    api_keys: tuple[str, ...] = Field(default=(), repr=False)
    #: Also require a key on the proxy endpoints, in ``x-grvl-api-key`` (``Authorization`` is the upstream's).
    protect_proxy: bool = False
    #: Request headers forwarded to the upstream (lower case); nothing else is.
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS
    #: Responses API: allow ``previous_response_id`` / ``conversation`` / stored ``prompt`` (context the
    #: upstream keeps and the guard cannot see). Off by default: such requests get a 400.
    allow_stored_context: bool = False

    # -- limits -----------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=20 * _MiB, ge=1024)
    #: Images per request (every image of every message counts; at most the guard's 10 per check).
    max_images: int = Field(default=MAX_IMAGES_PER_CHECK, ge=0, le=MAX_IMAGES_PER_CHECK)
    #: Decoded pixels per image (bigger images are refused before decoding).
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    #: Characters of text per request (all messages); longer requests are refused, never cut.
    max_text_chars: int = Field(default=200_000, ge=1)
    #: Inputs per ``/v1/moderations`` request.
    max_moderation_inputs: int = Field(default=32, ge=1)
    #: Choices per chat completion (``n``): each one is judged, so each one costs a guard check.
    max_choices: int = Field(default=4, ge=1)
    #: Seconds to receive a request body (a client trickling its body is cut off with 408).
    body_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    #: Guarded requests handled at once; up to ``max_queue`` more wait (``queue_timeout`` seconds at
    #: most), the rest get 429 with ``Retry-After``.
    max_concurrency: int = Field(default=64, ge=1)
    max_queue: int = Field(default=128, ge=0)
    queue_timeout: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    retry_after: int = Field(default=1, ge=1)
    #: Seconds for a whole non-streamed request (and a stream's set-up); 504 past it.
    request_timeout: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    #: Seconds a proxied stream may last in all, from its first byte to its last: a client that stops
    #: reading, or an upstream that trickles, holds a concurrency slot no longer than this (the stream is
    #: then cut, with an error event when the client still reads).
    stream_timeout: float = Field(default=900.0, gt=0, allow_inf_nan=False)

    # -- upstream ---------------------------------------------------------------------------------
    #: Seconds to wait for upstream bytes (a stream's next chunk included) and to connect.
    upstream_timeout: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    upstream_connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    upstream_max_connections: int = Field(default=256, ge=1)

    # -- image URLs -------------------------------------------------------------------------------
    #: Where image URLs may be fetched from (``grvl_sdk.fetch`` allowlist syntax). Empty (default): image
    #: URLs are refused; send ``data:`` URLs. Private, loopback and link-local addresses are always refused.
    image_allow: tuple[str, ...] = ()
    image_allow_http: bool = False
    image_max_bytes: int = Field(default=10 * _MiB, ge=1)
    image_fetch_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    image_max_redirects: int = Field(default=3, ge=0)

    # -- operations -------------------------------------------------------------------------------
    #: Seconds a shutdown waits for in-flight requests (streams included) before closing them.
    shutdown_timeout: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    #: Seconds an idle client connection is kept open: longer than a load balancer's idle timeout (often
    #: 60 s), so the balancer never reuses a connection the server is closing.
    keep_alive_timeout: float = Field(default=75.0, gt=0, allow_inf_nan=False)
    access_log: bool = True

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:9000/v1")
        return value.rstrip("/")

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "on_block" in value:
            raise ValueError("on_block is always 'refuse' in the server; choose block_style instead")
        Policy().merged(value)  # raises InputError on unknown fields or bad values
        return dict(value)

    @field_validator("forward_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(h.lower() for h in value)
        bad = [h for h in lowered if h in ("host", "content-length", "transfer-encoding", "connection", "cookie")]
        if bad:
            raise ValueError(f"these headers are never forwarded: {bad}")
        return lowered

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(key) < 16 for key in value):
            raise ValueError("API keys must be at least 16 characters long")
        return value

    def guard_policy(self) -> Policy:
        """The policy of every guarded call: the configured fields, ``on_block="refuse"``, the deadline."""
        fields: dict[str, Any] = {"deadline": self.guard_deadline, **self.policy, "on_block": "refuse"}
        return Policy().merged(fields)

    def public(self) -> dict[str, Any]:
        """The settings as a dict, API keys hidden (for logs and ``--print-config``)."""
        data = self.model_dump(mode="json")
        data["api_keys"] = [f"<{len(self.api_keys)} hidden>"] if self.api_keys else []
        return data

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> ServerConfig:
        """Settings from a JSON, TOML or YAML file (a table of the fields above), ``overrides`` on top."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read the server config {file}: {exc.strerror or exc}", field="config") from exc
        data = _parse(file, text)
        if not isinstance(data, dict):
            raise InputError(f"the server config {file} must hold a table of settings", field="config")
        return cls(**{**data, **overrides})

    def with_env_keys(self, environ: dict[str, str] | None = None) -> ServerConfig:
        """These settings plus the keys in ``$GRVL_SERVER_API_KEYS`` (comma-separated)."""
        raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
        keys = tuple(k.strip() for k in raw.split(",") if k.strip())
        if not keys:
            return self
        return ServerConfig(**{**self.model_dump(), "api_keys": (*self.api_keys, *keys)})


def _parse(file: Path, text: str) -> Any:
    suffix = file.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise InputError("YAML server configs need PyYAML (pip install pyyaml); or use JSON/TOML") from exc
            return yaml.safe_load(text)
    except InputError:
        raise
    except Exception as exc:  # each parser has its own error types
        raise InputError(f"cannot parse the server config {file}: {exc}", field="config") from exc
    raise InputError(f"the server config {file} must be .json, .toml or .yaml", field="config")
