"""Which teacher a command talks to: spec settings, then ``Teacher`` (the API's argument, the CLI's
flags), then the environment.

Remote teachers follow the openai SDK's conventions (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); the
local one is llama.cpp's server started for the duration of the job. Both end up as the same
``Endpoint`` that the pool talks to, so every feature works the same against either.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Literal

from pydantic import ValidationError

from promptbake.errors import InputError
from promptbake.plan.routing import label, teacher_models
from promptbake.specification.models import EndpointConfig, Prices, TeacherConfig
from promptbake.teacher.client import Endpoint

OPENAI_BASE_URL = "https://api.openai.com/v1"
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/@?#]*@")  # user:password@ before the host


@dataclass(frozen=True, kw_only=True)
class Teacher:
    """The teacher to use, laid over a spec's ``teacher:`` section: the same fields as that
    section and the CLI's teacher flags, where None keeps the spec's value.

    ``Teacher(base_url="http://localhost:8000/v1", model="Qwen/Qwen3-8B")`` is any
    OpenAI-compatible server; ``Teacher(kind="local")`` the embedded SmolLM2 on llama.cpp, and
    ``Teacher(local_model="out/student")`` a model ``promptbake.train`` wrote, on llama.cpp too. The API
    key is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``), never
    passed as a value, so it cannot end up in a notebook, a store or a manifest.
    """

    kind: Literal["remote", "local"] | None = None
    base_url: str | None = None
    endpoints: tuple[str, ...] = ()  # --base-url given more than once: one endpoint each
    model: str | None = None
    models: tuple[str, ...] | None = None  # a mix for the steps without their own (see plan/routing.py)
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
    local_model: str | None = None  # the local teacher's GGUF or trained model folder (default: SmolLM2)


# the flag that sets each TeacherConfig field, for error messages
FLAGS = {"kind": "--teacher", "base_url": "--base-url", "model": "--model", "api_key_env": "--api-key-env",
         "rpm": "--rpm", "tpm": "--tpm", "concurrency": "--concurrency", "max_attempts": "--max-attempts",
         "timeout": "--timeout", "threads": "--threads", "local_model": "--student"}


def merge(config: TeacherConfig, teacher: Teacher | None) -> TeacherConfig:
    """The spec's teacher section with the fields ``teacher`` sets laid over it, validated by the
    same model as the spec: a value out of range is bad input named by its flag, like a spec field."""
    if teacher is None:
        return config
    given = {f.name: getattr(teacher, f.name) for f in fields(teacher)
             if f.name != "endpoints" and getattr(teacher, f.name) is not None}
    # only what the spec set: the result's ``model_fields_set`` then still tells a field the user
    # named (``api_key_env``, see remote_endpoint) from a default
    data = config.model_dump(exclude_unset=True)
    data.update(given)
    if teacher.prices is not None:
        data["prices"] = {**config.prices, **teacher.prices}  # one model's price, not the whole table
    if teacher.model is not None and teacher.models is None:
        data["models"] = None  # --model names the one model: it replaces the spec's mix
    if teacher.models is not None and teacher.model is None:
        data["model"] = None
    if teacher.base_url is not None:
        data["endpoints"] = []  # one URL on the command line replaces the spec's fleet
    if teacher.endpoints:
        data["endpoints"] = [{"base_url": url} for url in teacher.endpoints]
    if teacher.local_model is not None and teacher.kind is None:
        data["kind"] = "local"  # a model file to serve means the local teacher
    if teacher.local_model is not None and teacher.kind == "remote":
        raise InputError(f"--student {teacher.local_model}: a trained student is served by the local engine; "
                         "drop --teacher remote")
    if (teacher.kind == "local" or teacher.local_model is not None) and teacher.model is None:
        data["model"] = data["models"] = None  # the spec's remote model names mean nothing to the local server
    try:
        return TeacherConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        value = given.get(field)
        where = f"{FLAGS[field]} {value}" if field in FLAGS and value is not None else f"teacher.{field}".rstrip(".")
        raise InputError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def model_name(config: TeacherConfig) -> str:
    """The teacher's one model, for commands that ask a single model (eval's answers and judge,
    distillation's break-even): a mix (``teacher.models``) needs ``--model`` to choose. Steps
    resolve theirs in :mod:`promptbake.plan.routing`."""
    models = teacher_models(config)
    if len(models) > 1:
        raise InputError(f"teacher.models mixes {', '.join(models)}: this command asks one model; pass --model")
    return models[0]


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


def remote_endpoint(config: TeacherConfig, *, key_named: bool | None = None) -> Endpoint:
    """The remote server and its key. ``key_named``: the user named the key variable (default:
    whether ``config`` sets ``api_key_env`` rather than defaulting to ``OPENAI_API_KEY``)."""
    url = base_url(config)
    check_base_url(url)
    named = "api_key_env" in config.model_fields_set if key_named is None else key_named
    api_key = os.environ.get(config.api_key_env) or None
    if api_key is None and named:
        # sent without it, a server that ignores keys answers and nothing says the key was missing
        raise InputError(f"api_key_env names {config.api_key_env}, which is not set (or empty): export it, "
                         f"or remove api_key_env to send no key to {url}")
    if api_key is None and url == OPENAI_BASE_URL:
        raise InputError(
            f"no API key: set {config.api_key_env}, point --base-url at an OpenAI-compatible "
            "server, or use --teacher local"
        )
    check_base_url(url)
    return Endpoint(base_url=url.rstrip("/"), model=label(config), api_key=api_key, api_key_env=config.api_key_env)


def check_base_url(base_url: str) -> None:
    """Refuse a URL no request can go to before anything is sent: ``localhost:8000/v1`` parses as
    scheme ``localhost``, and aiohttp's error for it names neither the flag nor the fix.

    Credentials in it (``http://user:pass@host/v1``) are refused too, never echoed: base URLs are
    printed in messages and summaries and name endpoints in the store, so a password there would
    leak, and aiohttp refuses to send them beside the key's ``Authorization`` header anyway."""
    shown = _USERINFO.sub(lambda m: f"{m[1] or ''}***@", base_url)
    if shown != base_url:
        raise InputError(f"--base-url / teacher.base_url {shown!r} carries credentials; base URLs are printed "
                         "and stored, so they must not: put the key in the variable --api-key-env names "
                         "(sent as a Bearer token)")
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"; did you mean http://{base_url}?" if "://" not in base_url else ""
        raise InputError(f"--base-url / teacher.base_url {base_url!r} is not an http:// or https:// URL{hint}")


@contextlib.contextmanager
def open_teacher(config: TeacherConfig) -> Iterator[tuple[Endpoint, TeacherConfig]]:
    """The endpoint to talk to, and the config with limits fitting it. A local teacher's server
    lives exactly as long as this block (stopped on errors and Ctrl-C too)."""
    if config.kind == "remote" and config.endpoints:
        for spec in config.endpoints:  # every one before anything is stored or sent
            check_base_url(spec.base_url)
        # each request names its model when planned; the fleet sends it to an endpoint serving it
        url = config.endpoints[0].base_url
        yield Endpoint(base_url=url.rstrip("/"), model=label(config)), config
        return
    if config.kind == "remote":
        yield remote_endpoint(config), config
        return
    from promptbake.teacher.local import local_servers

    with local_servers(config.threads, model=config.local_model) as servers:
        model = model_name(config)
        first = Endpoint(base_url=servers[0].base_url, model=model, api_key=None, one_choice=True)
        # llama.cpp answers one request at a time per server: more in flight only queues
        if len(servers) == 1:
            yield first, config.model_copy(update={"concurrency": min(config.concurrency, servers[0].concurrency)})
            return
        # one server per core behind the endpoints layer: each core answers its own request, and
        # each serves the one model llama.cpp has loaded
        endpoints = [EndpointConfig(base_url=s.base_url, model=model, concurrency=s.concurrency) for s in servers]
        yield first, config.model_copy(update={"endpoints": endpoints})
