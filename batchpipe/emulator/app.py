"""The HTTP surface: the Anthropic endpoints the pipeline uses, plus `/_emulator/*` controls.

Wire details (headers, status codes, error strings, JSONL framing) follow the research
file, because the point of the emulator is that code passing against it also works
against api.anthropic.com through the official SDK. The controls (health, clock, ledger,
faults, limits, files, reset) are never faulted and need no API key: they belong to the
test harness. The Files API's routes live in files_api.py.

Body limits: a batch create over 256 MB and a Messages or count_tokens call over 32 MB
are a 413 `request_too_large`, as Cloudflare answers them; `--max-batch-bytes` and
`--max-messages-bytes` (or `max_batch_bytes` / `max_messages_bytes` through
`POST /_emulator/faults`) lower them, so a test can make a partition need several
batches by size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchpipe.emulator import background, files_api, lifecycle
from batchpipe.emulator.faults import Faults, FaultSettings
from batchpipe.emulator.limits import KEYS as LIMIT_KEYS
from batchpipe.emulator.limits import Limits, LimitSettings
from batchpipe.emulator.protocol import (
    ApiMiddleware,
    ResultsBody,
    int_param,
    on_api_error,
    on_crash,
    on_http_error,
    paged,
    parse_batch_json,
    read_body,
    read_json,
    validate_create,
    version_and_betas,
)
from batchpipe.emulator.responders import MODELS, Sources, count_tokens_of, respond
from batchpipe.emulator.state import BatchRecord, Store
from batchpipe.emulator.wire import ApiError, Prepared, invalid, not_found, rfc3339

MAX_BATCH_BODY = 256 * 1024 * 1024  # research §1.5: Cloudflare answers 413 above this
MAX_MESSAGES_BODY = 32 * 1024 * 1024
MAX_CONTROL_BODY = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Emulator:
    """What the handlers share, kept on `app.state.emulator`: the batch store, the
    seconds before a batch starts completing, the fault injector and the account limits."""

    store: Store
    latency: float
    injector: Faults
    limits: Limits = field(default_factory=Limits)

    def apply_limits(self, settings: LimitSettings) -> None:
        """Set the limits; the credit is the ledger's to know, as lines spend it."""
        self.limits.apply(settings)
        self.store.ledger.credit_usd = settings.credit_usd

    def max_batch_body(self) -> int:
        return self.limits.settings.max_batch_bytes or MAX_BATCH_BODY

    def max_messages_body(self) -> int:
        return self.limits.settings.max_messages_bytes or MAX_MESSAGES_BODY

    def sources(self) -> Sources:
        return Sources(self.store.files, self.store.urls)


def emulator_of(request: Request) -> Emulator:
    return request.app.state.emulator


def base_url(request: Request) -> str:
    return str(request.base_url)


# Message Batches


async def create_batch(request: Request) -> Response:
    emu = emulator_of(request)
    raw = await read_body(request, emu.max_batch_body())
    # parsed in slices in a thread, so the event loop serves other calls meanwhile
    requests = await run_in_threadpool(lambda: validate_create(parse_batch_json(raw)))
    version, betas = version_and_betas(request)
    line_faults = emu.injector.for_new_batch()

    def create() -> BatchRecord:
        # checked and created under one hold of the lock, so two creates cannot both fit
        def check() -> None:
            check_limits(emu, len(requests))

        return lifecycle.create(emu.store, requests, version, betas, line_faults, raw, check=check)

    record = await run_in_threadpool(create)
    answer = JSONResponse(lifecycle.batch_json(record, base_url(request)))
    lifecycle.process_soon(emu.store, record, emu.latency)
    return answer


def check_limits(emu: Emulator, adding: int) -> None:
    """Raise the error a create of `adding` requests meets under the account limits.
    Open batches are brought up to date first only when a limit needs the billed total
    or the queue, so with the limits off a create costs what it always did."""
    if not emu.limits.needs_billing():
        return
    queued = lifecycle.queued(emu.store, emu.latency)
    billed = emu.store.ledger.billed_usd()
    now = emu.store.clock.now()
    error = emu.limits.check_create(billed, queued, adding, emu.latency, now)
    if error is not None:
        raise error
    emu.limits.note_queued(queued + adding)


def batches_newest_first(emu: Emulator, base: str) -> list[dict[str, Any]]:
    with emu.store.lock:
        records = [lifecycle.refresh(emu.store, r, emu.latency) for r in emu.store.all()]
        return [lifecycle.batch_json(r, base) for r in records]


async def list_batches(request: Request) -> Response:
    limit = int_param(request, "limit", 20, 1, 1000)
    batches = await run_in_threadpool(batches_newest_first, emulator_of(request), base_url(request))
    return paged(request, batches, limit)


async def retrieve_batch(request: Request) -> Response:
    emu = emulator_of(request)
    batch_id = request.path_params["batch_id"]
    record = await run_in_threadpool(lifecycle.get, emu.store, batch_id, emu.latency)
    if emu.limits.hides(record.created_at, emu.store.clock.now()):
        raise not_found(f"Message Batch {batch_id} not found.")  # not visible here yet
    return JSONResponse(lifecycle.batch_json(record, base_url(request)))


async def cancel_batch(request: Request) -> Response:
    emu = emulator_of(request)
    batch_id = request.path_params["batch_id"]
    record = await run_in_threadpool(lifecycle.cancel, emu.store, batch_id, emu.latency)
    return JSONResponse(lifecycle.batch_json(record, base_url(request)))


async def delete_batch(request: Request) -> Response:
    emu = emulator_of(request)
    batch_id = request.path_params["batch_id"]
    return JSONResponse(await run_in_threadpool(lifecycle.delete, emu.store, batch_id, emu.latency))


def open_results(emu: Emulator, batch_id: str) -> Any:
    with emu.store.lock:  # open under the lock: a delete or reset may follow at once
        record = lifecycle.get(emu.store, batch_id, emu.latency)
        if record.processing_status != "ended" or record.archived_at is not None:
            raise not_found(f"Message Batch {batch_id} has no available results.")
        return emu.store.results_path(batch_id).open("rb")


async def batch_results(request: Request) -> Response:
    emu = emulator_of(request)
    handle = await run_in_threadpool(open_results, emu, request.path_params["batch_id"])
    size = os.fstat(handle.fileno()).st_size
    return ResultsBody(handle, size, emu.injector.stream_cut(size))


# Messages


def holds_blocks(params: Any) -> bool:
    """Whether some message has a list of blocks (which may hold media to decode or
    fetch): such a request is answered off the event loop."""
    messages = params.get("messages") if isinstance(params, dict) else None
    return isinstance(messages, list) and any(
        isinstance(message, dict) and isinstance(message.get("content"), list)
        for message in messages
    )


async def off_loop_if_blocks(params: Any, work: Callable[[], T]) -> T:
    return await run_in_threadpool(work) if holds_blocks(params) else work()


async def create_message(request: Request) -> Response:
    emu = emulator_of(request)
    params = await read_json(request, emu.max_messages_body())
    if isinstance(params, dict) and params.get("stream") is True:
        raise invalid("stream: streaming responses are not supported by the emulator")
    version, betas = version_and_betas(request)

    def answer() -> Prepared | ApiError:
        return respond(
            params,
            api_version=version,
            betas=betas,
            batch=False,
            seed=emu.injector.seed,
            cache=emu.store.prompt_cache,
            now=emu.store.clock.now(),
            sources=emu.sources(),
        )

    message = await off_loop_if_blocks(params, answer)
    if isinstance(message, ApiError):
        raise message
    return JSONResponse(message)


async def count_tokens(request: Request) -> Response:
    emu = emulator_of(request)
    params = await read_json(request, emu.max_messages_body())
    _, betas = version_and_betas(request)

    def count() -> int:
        now = emu.store.clock.now()
        return count_tokens_of(params, betas=betas, sources=emu.sources(), now=now)

    return JSONResponse({"input_tokens": await off_loop_if_blocks(params, count)})


# Models


def model_json(model_id: str) -> dict[str, Any]:
    spec = MODELS[model_id]
    return {
        "type": "model",
        "id": spec.id,
        "display_name": spec.display_name,
        "created_at": spec.created_at,
        "lifecycle": "active",
        "max_tokens": spec.max_output,
    }


async def list_models(request: Request) -> Response:
    limit = int_param(request, "limit", 20, 1, 1000)
    return paged(request, [model_json(model_id) for model_id in MODELS], limit)


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    if model_id not in MODELS:
        raise not_found(f"model: {model_id}")
    return JSONResponse(model_json(model_id))


# /_emulator/* controls


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def advance_clock(request: Request) -> Response:
    store = emulator_of(request).store
    body = await read_json(request, MAX_CONTROL_BODY)
    seconds = body.get("advance_seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise invalid("advance_seconds: Input should be a number >= 0")
    now = await run_in_threadpool(store.clock.advance, float(seconds))
    return JSONResponse({"now": rfc3339(now), "offset_seconds": store.clock.offset_seconds})


async def ledger(request: Request) -> Response:
    batch_id = request.query_params.get("batch_id")
    return JSONResponse(await run_in_threadpool(emulator_of(request).store.ledger.report, batch_id))


def faults_json(emu: Emulator) -> dict[str, Any]:
    """The fault settings, plus the limits that are on."""
    return emu.injector.to_json() | emu.limits.settings.shown()


async def get_faults(request: Request) -> Response:
    return JSONResponse(faults_json(emulator_of(request)))


async def get_limits(request: Request) -> Response:
    """What the account limits did: 429s, those a client did not wait for, peak queue."""
    return JSONResponse(emulator_of(request).limits.record.to_json())


async def set_faults(request: Request) -> Response:
    """Faults and limits share one endpoint; a bad value anywhere changes nothing."""
    emu = emulator_of(request)
    changes = await read_json(request, MAX_CONTROL_BODY)
    limits = emu.limits.update(changes)
    if isinstance(changes, dict):
        changes = {key: value for key, value in changes.items() if key not in LIMIT_KEYS}
    emu.injector.update(changes)
    emu.apply_limits(limits)
    return JSONResponse(faults_json(emu))


async def reset(request: Request) -> Response:
    emu = emulator_of(request)
    await run_in_threadpool(emu.store.reset)
    emu.injector.reset()
    emu.limits.reset()
    emu.apply_limits(emu.limits.settings)
    return JSONResponse({"ok": True})


BATCH = "/v1/messages/batches/{batch_id}"
ROUTES = [
    Route("/v1/messages/batches", create_batch, methods=["POST"]),
    Route("/v1/messages/batches", list_batches, methods=["GET"]),
    Route(BATCH, retrieve_batch, methods=["GET"]),
    Route(BATCH, delete_batch, methods=["DELETE"]),
    Route(f"{BATCH}/cancel", cancel_batch, methods=["POST"]),
    Route(f"{BATCH}/results", batch_results, methods=["GET"]),
    Route("/v1/messages", create_message, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    Route("/v1/files", files_api.upload_file, methods=["POST"]),
    Route("/v1/files", files_api.list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", files_api.get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", files_api.delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", files_api.download_file, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id}", get_model, methods=["GET"]),
    Route("/_emulator/health", health, methods=["GET"]),
    Route("/_emulator/clock", advance_clock, methods=["POST"]),
    Route("/_emulator/ledger", ledger, methods=["GET"]),
    Route("/_emulator/faults", get_faults, methods=["GET"]),
    Route("/_emulator/limits", get_limits, methods=["GET"]),
    Route("/_emulator/files", files_api.files_report, methods=["GET"]),
    Route("/_emulator/faults", set_faults, methods=["POST"]),
    Route("/_emulator/reset", reset, methods=["POST"]),
]


def create_app(
    state_dir: Path,
    latency_seconds: float = 2.0,
    api_key: str | None = None,
    *,
    faults: FaultSettings | None = None,
    seed: int = 0,
    limits: LimitSettings | None = None,
) -> Starlette:
    """The emulator as an ASGI app; batches start completing `latency_seconds` after
    creation, at `faults.requests_per_second` (all at once by default). `faults`, `seed`
    and `limits` are the startup settings that `POST /_emulator/reset` returns to."""
    emu = Emulator(
        Store(Path(state_dir)),
        latency_seconds,
        Faults(faults or FaultSettings(), seed),
        Limits(limits or LimitSettings()),
    )
    emu.apply_limits(emu.limits.settings)
    background.install(emu.store)
    middleware = Middleware(ApiMiddleware, api_key=api_key, faults=emu.injector, limits=emu.limits)
    app = Starlette(
        routes=ROUTES,
        middleware=[middleware],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
    app.state.emulator = emu
    return app
