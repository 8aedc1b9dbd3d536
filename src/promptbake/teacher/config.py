"""Which teacher a command talks to: spec settings, then ``Teacher`` (the API's argument, the CLI's
flags), then the environment.

Remote teachers follow the openai SDK's conventions (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); the
local one is llama.cpp's server started for the duration of the job. Both end up as the same
``Endpoint`` that the pool talks to, so every feature works the same against either.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Literal

from pydantic import ValidationError

from promptbake.errors import InputError
from promptbake.specification.models import EndpointConfig, Prices, TeacherConfig
from promptbake.teacher.client import Endpoint

OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_MODEL = "smollm2"


@dataclass(frozen=True, kw_only=True)
class Teacher:
    """The teacher to use, laid over a spec's ``teacher:`` section: the same fields as that
    section and the CLI's teacher flags, where None keeps the spec's value.

    ``Teacher(base_url="http://localhost:8000/v1", model="Qwen/Qwen3-8B")`` is any
    OpenAI-compatible server; ``Teacher(kind="local")`` the embedded SmolLM2 on llama.cpp. The API
    key is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``), never
    passed as a value, so it cannot end up in a notebook, a store or a manifest.
    """

    kind: Literal["remote", "local"] | None = None
    base_url: str | None = None
    endpoints: tuple[str, ...] = ()  # --base-url given more than once: one endpoint each
    model: str | None = None
    api_key_env: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    structured_output: Literal["auto", "json_schema", "json_object", "none"] | None = None
    prices: Mapping[str, Prices | Mapping[str, float]] | None = None
    max_retry_after: float | None = None
    threads: int | None = None  # the local teacher's llama.cpp threads (default: one per core)


# the flag that sets each TeacherConfig field, for error messages
FLAGS = {"kind": "--teacher", "base_url": "--base-url", "model": "--model", "api_key_env": "--api-key-env",
         "rpm": "--rpm", "tpm": "--tpm", "concurrency": "--concurrency", "max_attempts": "--max-attempts",
         "timeout": "--timeout", "threads": "--threads"}


def merge(config: TeacherConfig, teacher: Teacher | None) -> TeacherConfig:
    """The spec's teacher section with the fields ``teacher`` sets laid over it, validated by the
    same model as the spec: a value out of range is bad input named by its flag, like a spec field."""
    if teacher is None:
        return config
    given = {f.name: getattr(teacher, f.name) for f in fields(teacher)
             if f.name != "endpoints" and getattr(teacher, f.name) is not None}
    data = config.model_dump()
    data.update(given)
    if teacher.prices is not None:
        data["prices"] = {**config.prices, **teacher.prices}  # one model's price, not the whole table
    if teacher.base_url is not None:
        data["endpoints"] = []  # one URL on the command line replaces the spec's fleet
    if teacher.endpoints:
        data["endpoints"] = [{"base_url": url} for url in teacher.endpoints]
    if teacher.kind == "local" and teacher.model is None:
        data["model"] = None  # the spec's remote model name means nothing to the local server
    try:
        return TeacherConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        value = given.get(field)
        where = f"{FLAGS[field]} {value}" if field in FLAGS and value is not None else f"teacher.{field}"
        raise InputError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def model_name(config: TeacherConfig) -> str:
    if config.model:
        return config.model
    if config.kind == "local":
        return LOCAL_MODEL
    raise InputError("no teacher model: set teacher.model in the spec or pass --model")


def base_url(config: TeacherConfig) -> str:
    """The remote server: the flag or spec, then ``OPENAI_BASE_URL``, then OpenAI."""
    return (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")


def endpoint_identity(config: TeacherConfig) -> str:
    """Which server answers: its base URL (a fleet's, all of them), or ``local`` for the embedded
    teacher (whose port changes from run to run while the model does not)."""
    if config.kind == "local":
        return "local"
    if config.endpoints:
        return " ".join(sorted(e.base_url.rstrip("/") for e in config.endpoints))
    return base_url(config)


def remote_endpoint(config: TeacherConfig) -> Endpoint:
    url = base_url(config)
    api_key = os.environ.get(config.api_key_env) or None
    if api_key is None and url == OPENAI_BASE_URL:
        raise InputError(
            f"no API key: set {config.api_key_env}, point --base-url at an OpenAI-compatible "
            "server, or use --teacher local"
        )
    check_base_url(url)
    return Endpoint(base_url=url.rstrip("/"), model=model_name(config), api_key=api_key,
                    api_key_env=config.api_key_env)


def check_base_url(base_url: str) -> None:
    """Refuse a URL no request can go to before anything is sent: ``localhost:8000/v1`` parses as
    scheme ``localhost``, and aiohttp's error for it names neither the flag nor the fix."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"; did you mean http://{base_url}?" if "://" not in base_url else ""
        raise InputError(f"--base-url / teacher.base_url {base_url!r} is not an http:// or https:// URL{hint}")


@contextlib.contextmanager
def open_teacher(config: TeacherConfig) -> Iterator[tuple[Endpoint, TeacherConfig]]:
    """The endpoint to talk to, and the config with limits fitting it. A local teacher's server
    lives exactly as long as this block (stopped on errors and Ctrl-C too)."""
    if config.kind == "remote" and config.endpoints:
        from promptbake.teacher.endpoints import fleet_model

        # requests are planned under the fleet's model; the pool sends them to its endpoints
        url = config.endpoints[0].base_url
        yield Endpoint(base_url=url.rstrip("/"), model=fleet_model(config)), config
        return
    if config.kind == "remote":
        yield remote_endpoint(config), config
        return
    from promptbake.teacher.local import local_servers

    with local_servers(config.threads) as servers:
        model = model_name(config)
        first = Endpoint(base_url=servers[0].base_url, model=model, api_key=None, one_choice=True)
        # llama.cpp answers one request at a time per server: more in flight only queues
        if len(servers) == 1:
            yield first, config.model_copy(update={"concurrency": min(config.concurrency, servers[0].concurrency)})
            return
        # one server per core behind the endpoints layer: each core answers its own request
        endpoints = [EndpointConfig(base_url=s.base_url, model=model, concurrency=s.concurrency) for s in servers]
        yield first, config.model_copy(update={"endpoints": endpoints})
