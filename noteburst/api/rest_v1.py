"""Rubin's Noteburst REST API v1, as a thin adapter over Noteburst's services.

Times Square and other Rubin tools were written against the REST API of
Rubin Observatory's Noteburst (``POST /noteburst/v1/notebooks/``, then
``GET`` the job URL until ``status`` is ``complete``).  This module serves
that API, field for field, so such a client works unchanged against this
service: it submits through the same
:class:`~noteburst.services.submission.SubmissionService` and reads through
the same :class:`~noteburst.services.execution.ExecutionService` as GraphQL,
so tenancy (a caller sees only their own executions, an unknown and another
user's id look the same), per-user limits and authentication
(:mod:`noteburst.api.auth`: the ingress's user header in proxy mode, scope
``exec:notebook``) are exactly GraphQL's.  Nothing here decides anything a
service already decides.

What does not carry over from one model to the other is decided by the pure
functions :func:`job_status` and :func:`outcome_fields` and documented in
``docs/rest-v1.md``: Rubin's ``success`` means "the worker task did not
raise", so a cell error is ``success: true`` with ``ipynb_error``, while
timeouts, Jupyter failures and Noteburst's own failures are
``success: false`` with ``error``.

Errors are answered at the edge in the shapes Rubin's FastAPI service uses
(``{"detail": [{"type", "loc", "msg"}]}``): bad input is 422, an unknown
job 404, a database outage 503 with ``Retry-After``; anything unexpected is
logged and masked as a 500.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.status import (
    HTTP_202_ACCEPTED,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_422_UNPROCESSABLE_CONTENT,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from .. import __version__
from ..domain.auth import Caller
from ..domain.cache import CacheMode, CachePolicy
from ..domain.execution import ErrorCode, Execution, ExecutionStatus
from ..domain.webhook import WebhookRequest
from ..exceptions import (
    AuthenticationError,
    ClientError,
    InvalidInputError,
    InvalidNotebookError,
    LimitExceededError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnknownKernelError,
    WebhookRefusedError,
)
from ..factory import ApiFactory
from .auth import authenticate

__all__ = [
    "PREFIX",
    "ErrorBody",
    "IpynbErrorBody",
    "JobStatus",
    "NotebookRequest",
    "NotebookResponse",
    "job_status",
    "notebook_response",
    "outcome_fields",
    "parse_timeout",
    "rest_v1_routes",
]

_logger = structlog.get_logger("noteburst.api.rest_v1")

PREFIX = "/noteburst"
"""Rubin's base path (``NOTEBURST_PATH_PREFIX`` there)."""

JobStatus = Literal["deferred", "queued", "in_progress", "complete", "not_found"]
"""arq's job statuses, which Rubin's API reports."""

_DURATION_RE = re.compile(
    r"^\s*(?:(?P<weeks>\d+)\s*w(?:eeks?)?\s*,?\s*)?"
    r"(?:(?P<days>\d+)\s*d(?:ays?)?\s*,?\s*)?"
    r"(?:(?P<hours>\d+)\s*h(?:ours?|rs?)?\s*,?\s*)?"
    r"(?:(?P<minutes>\d+)\s*m(?:inutes?|ins?)?\s*,?\s*)?"
    r"(?:(?P<seconds>\d+)\s*s(?:econds?|ecs?)?\s*)?$",
    re.IGNORECASE,
)
_TIMEDELTA = TypeAdapter(timedelta)
_BOOL = TypeAdapter(bool)


def parse_timeout(value: object) -> object:
    """Turn Rubin's ``timeout`` (seconds, or a duration string) into seconds.

    Accepted as Rubin's ``HumanTimedelta`` does: a number of seconds (also
    as a string), a human duration such as ``"5m"``, ``"1h30m"`` or
    ``"1d 2h"`` (weeks, days, hours, minutes, seconds, in that order), or
    what Pydantic accepts for a timedelta (``"PT5M"``, ``"00:05:00"``).
    ``None`` stays ``None`` (the deployment's default).  Range checks are
    the submission service's.

    Raises
    ------
    ValueError
        Raised if the value is none of these.
    """
    if value is None or isinstance(value, timedelta):
        return value.total_seconds() if isinstance(value, timedelta) else None
    if isinstance(value, bool):
        msg = "must be a number of seconds or a duration such as '5m'"
        raise ValueError(msg)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        match = _DURATION_RE.match(text)
        if text and match is not None and any(match.groupdict().values()):
            parts = {k: int(v) for k, v in match.groupdict().items() if v}
            return timedelta(**parts).total_seconds()
        try:
            return _TIMEDELTA.validate_python(text).total_seconds()
        except ValidationError:
            pass
    msg = (
        f"{value!r} is not a number of seconds or a duration such as '5m', "
        "'1h30m' or '1d'"
    )
    raise ValueError(msg)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class CacheBody(BaseModel):
    """Noteburst's result cache, as GraphQL's ``CacheInput`` (an extension)."""

    model_config = ConfigDict(extra="forbid")

    mode: Annotated[CacheMode, BeforeValidator(_lower)] = Field(
        CacheMode.BYPASS,
        description="'use', 'refresh' or 'bypass' (GraphQL's CacheMode).",
    )
    max_age_seconds: float | None = Field(
        None,
        description="With 'use': reuse only a result at most this old; unset: any.",
    )

    def policy(self) -> CachePolicy:
        """Return the service's cache policy for this body."""
        return CachePolicy(mode=self.mode, max_age_seconds=self.max_age_seconds)


class WebhookBody(BaseModel):
    """A signed callback when the job ends, as GraphQL's ``WebhookInput``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL; public addresses only by default.")
    secret: str = Field(
        repr=False,
        description="'whsec_' + base64 of 24 to 64 random bytes; never returned.",
    )

    def request(self) -> WebhookRequest:
        """Return the service's webhook request for this body."""
        return WebhookRequest(url=self.url, secret=self.secret)


class NotebookRequest(BaseModel):
    """Body of ``POST /noteburst/v1/notebooks/`` (Rubin's field names).

    ``cache`` and ``webhook`` are Noteburst's extensions, absent from
    Rubin's API: a Rubin client never sends them and is served as before
    (no cache, no webhook), while a client that knows them gets GraphQL's
    result cache (a dashboard's repeated page views) and completion
    callbacks instead of polling.
    """

    model_config = ConfigDict(extra="ignore")

    ipynb: str | dict[str, Any] = Field(
        description="The notebook: nbformat v4 JSON, as a string or an object."
    )
    kernel_name: str | None = Field(
        None,
        description=(
            "Kernel to run on. Unset: the notebook's kernelspec, else the "
            "deployment's default (Rubin's default, 'lsst', exists only where "
            "a kernel of that name is installed). A name differing only in "
            "case from exactly one available kernel ('LSST') selects it."
        ),
    )
    enable_retry: bool = Field(
        True,
        description=(
            "Accepted for compatibility; Noteburst always retries executions "
            "whose lab or worker went away, up to its configured attempts."
        ),
    )
    timeout: Annotated[
        float | None,
        BeforeValidator(parse_timeout),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "examples": ["300", "5m", "1h30m"]},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        None,
        description=(
            "Execution timeout: seconds, or a duration such as '5m'. Unset: "
            "the deployment's default."
        ),
    )
    cache: CacheBody | None = Field(
        None,
        description=(
            "Noteburst extension: the result cache (as GraphQL's CacheInput). "
            "Unset: bypassed, as in Rubin's API."
        ),
    )
    webhook: WebhookBody | None = Field(
        None,
        description=(
            "Noteburst extension: a signed POST when the job ends (as "
            "GraphQL's WebhookInput). Unset: none; poll self_url."
        ),
    )


class IpynbErrorBody(BaseModel):
    """A cell's exception: Rubin's ``ipynb_error``."""

    name: str
    message: str


class ErrorBody(BaseModel):
    """Why an execution failed outside the notebook: Rubin's ``error``."""

    code: Literal["timeout", "jupyter_error", "unknown"]
    message: str
    exception_type: str | None = None


class NotebookResponse(BaseModel):
    """A job as Rubin's API shows it; ``None`` fields are left out."""

    job_id: str
    kernel_name: str
    enqueue_time: datetime
    status: JobStatus
    self_url: str
    timeout: float
    source: str | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    success: bool | None = None
    ipynb: str | None = None
    ipynb_error: IpynbErrorBody | None = None
    error: ErrorBody | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body, without the null fields (as Rubin's)."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)
        return data


def job_status(execution: Execution) -> JobStatus:
    """Rubin's ``status`` for an execution.

    Queued is ``queued``, or ``deferred`` when it waits for a retry after a
    lost lab or worker (it has been attempted before), as arq reports a job
    between retry attempts; running is ``in_progress``; every terminal
    status is ``complete`` (``success`` and ``error`` say how it ended).
    """
    if execution.status is ExecutionStatus.QUEUED:
        return "deferred" if execution.attempts > 0 else "queued"
    if execution.status is ExecutionStatus.RUNNING:
        return "in_progress"
    return "complete"


_JUPYTER_ERRORS = frozenset(
    {ErrorCode.KERNEL_DIED, ErrorCode.KERNEL_START_FAILED, ErrorCode.LAB_UNAVAILABLE}
)


def outcome_fields(
    execution: Execution,
) -> tuple[bool | None, IpynbErrorBody | None, ErrorBody | None]:
    """Rubin's ``success``, ``ipynb_error`` and ``error`` for an execution.

    All ``None`` until the execution is terminal.  Rubin's ``success`` is
    "the worker task did not raise", so a notebook that ran (including one
    whose cell raised, which Rubin's clients render) is ``success: true``;
    anything that stopped the notebook from running to its end or its first
    error is ``success: false`` with an ``error`` whose ``code`` is
    ``timeout``, ``jupyter_error`` (the lab or kernel failed) or ``unknown``
    (with ``exception_type`` naming Noteburst's own error code).
    """
    if not execution.status.is_terminal:
        return None, None, None
    failure = execution.error
    if execution.status is ExecutionStatus.SUCCEEDED:
        return True, None, None
    if failure is not None and failure.code is ErrorCode.CELL_ERROR:
        name = failure.ename or "Exception"
        return True, IpynbErrorBody(name=name, message=failure.message), None
    if execution.status is ExecutionStatus.TIMED_OUT or (
        failure is not None and failure.code is ErrorCode.TIMEOUT
    ):
        message = failure.message if failure is not None else "execution timed out"
        return False, None, ErrorBody(code="timeout", message=message)
    if failure is not None and failure.code in _JUPYTER_ERRORS:
        return (
            False,
            None,
            ErrorBody(
                code="jupyter_error",
                message=failure.message,
                exception_type=f"noteburst.{failure.code.value}",
            ),
        )
    if failure is not None:
        code, message = failure.code.value, failure.message
    elif execution.status is ExecutionStatus.CANCELLED:
        code, message = ErrorCode.CANCELLED.value, "the execution was cancelled"
    else:
        code, message = ErrorCode.INTERNAL.value, "the execution failed"
    return (
        False,
        None,
        ErrorBody(code="unknown", message=message, exception_type=f"noteburst.{code}"),
    )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def notebook_response(
    execution: Execution,
    *,
    self_url: str,
    ipynb: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> NotebookResponse:
    """Show an execution as Rubin's ``NotebookResponse``.

    ``ipynb`` (the executed notebook) is shown only when ``success`` is
    true, as Rubin does; ``source`` only when given (``?source=true``).
    """
    success, ipynb_error, error = outcome_fields(execution)
    return NotebookResponse(
        job_id=execution.id,
        kernel_name=execution.kernel_name,
        enqueue_time=_utc(execution.created_at) or execution.created_at,
        status=job_status(execution),
        self_url=self_url,
        timeout=execution.timeout_seconds,
        source=None if source is None else _dumps(source),
        start_time=_utc(execution.started_at),
        finish_time=_utc(execution.finished_at),
        success=success,
        ipynb=_dumps(ipynb) if success and ipynb is not None else None,
        ipynb_error=ipynb_error,
        error=error,
    )


def _dumps(notebook: dict[str, Any]) -> str:
    return json.dumps(notebook, ensure_ascii=False)


def _detail(
    status: int,
    kind: str,
    msg: str,
    loc: list[str | int] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    entry: dict[str, Any] = {"type": kind}
    if loc is not None:
        entry["loc"] = loc
    entry["msg"] = msg
    return JSONResponse({"detail": [entry]}, status_code=status, headers=headers)


def _validation_response(exc: ValidationError, where: str) -> JSONResponse:
    """422 as FastAPI shows a request validation error (without ``input``)."""
    detail = [
        {"type": e["type"], "loc": [where, *e["loc"]], "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_context=False)
    ]
    return JSONResponse({"detail": detail}, status_code=HTTP_422_UNPROCESSABLE_CONTENT)


_FIELDS: dict[str, list[str | int]] = {
    "timeoutSeconds": ["timeout"],
    "kernelName": ["kernel_name"],
    "cache.maxAgeSeconds": ["cache", "max_age_seconds"],
}


def _client_error_response(exc: ClientError) -> JSONResponse:
    """Map a service's client error onto Rubin's HTTP error shapes."""
    if isinstance(exc, AuthenticationError):
        return _detail(
            HTTP_401_UNAUTHORIZED,
            exc.code,
            exc.message,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(exc, PermissionDeniedError):
        return _detail(HTTP_403_FORBIDDEN, exc.code, exc.message)
    if isinstance(exc, LimitExceededError):
        return _detail(HTTP_429_TOO_MANY_REQUESTS, exc.code, exc.message)
    loc: list[str | int] = ["body"]
    if isinstance(exc, InvalidNotebookError):
        loc.append("ipynb")
    elif isinstance(exc, UnknownKernelError):
        loc.append("kernel_name")
    elif isinstance(exc, InvalidInputError | WebhookRefusedError):
        loc.extend(_FIELDS.get(exc.field, exc.field.split(".")))
    return _detail(HTTP_422_UNPROCESSABLE_CONTENT, exc.code, exc.message, loc)


def _unavailable_response(exc: ServiceUnavailableError) -> JSONResponse:
    retry_after = max(1, math.ceil(exc.retry_after_seconds))
    return _detail(
        HTTP_503_SERVICE_UNAVAILABLE,
        exc.code,
        exc.message,
        headers={"Retry-After": str(retry_after)},
    )


def _not_found() -> JSONResponse:
    return _detail(
        HTTP_404_NOT_FOUND, "unknown_job", "Job not found", ["path", "job_id"]
    )


def _self_url(request: Request, factory: ApiFactory, job_id: str) -> str:
    """Return the job's URL: under ``public_url`` if set, else as requested."""
    path = f"{PREFIX}/v1/notebooks/{job_id}"
    if factory.public_url:
        return factory.public_url.rstrip("/") + path
    return str(request.base_url).rstrip("/") + path


def _match_kernel(exc: UnknownKernelError) -> str | None:
    """Return the one available kernel named as asked up to case, if any."""
    wanted = exc.kernel_name.casefold()
    matches = [name for name in exc.available if name.casefold() == wanted]
    return matches[0] if len(matches) == 1 else None


_Handler = Callable[[Request, ApiFactory, Caller], Awaitable[Response]]


def rest_v1_routes(mode: str) -> list[BaseRoute]:
    """Return the routes of Rubin's API, authenticating as ``mode`` says.

    Parameters
    ----------
    mode
        ``auth.mode``, for the wording of a refusal (see
        :func:`~noteburst.api.auth.authenticate`).
    """

    def guarded(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate, run the handler, and map every error at the edge."""

        async def endpoint(request: Request) -> Response:
            state: Any = request.state
            factory = ApiFactory(state.context)
            try:
                caller = await authenticate(factory, request, mode=mode)
                return await handler(request, factory, caller)
            except ClientError as exc:
                return _client_error_response(exc)
            except ServiceUnavailableError as exc:
                _logger.warning("REST request refused", error=str(exc))
                return _unavailable_response(exc)
            except Exception:
                _logger.exception("Unexpected error in REST v1", path=request.url.path)
                return _detail(
                    HTTP_500_INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "Unexpected error.",
                )

        return endpoint

    async def submit(request: Request, factory: ApiFactory, caller: Caller) -> Response:
        body = await request.body()
        try:
            data = NotebookRequest.model_validate_json(body)
        except ValidationError as exc:
            return _validation_response(exc, "body")
        service = factory.create_submission_service(caller)
        options: dict[str, Any] = {
            "timeout_seconds": data.timeout,
            "cache": None if data.cache is None else data.cache.policy(),
            "webhook": None if data.webhook is None else data.webhook.request(),
        }
        try:
            execution = await service.submit(
                data.ipynb, kernel_name=data.kernel_name, **options
            )
        except UnknownKernelError as exc:
            kernel = _match_kernel(exc)
            if kernel is None:
                raise
            execution = await service.submit(data.ipynb, kernel_name=kernel, **options)
        _logger.info(
            "Notebook submitted (REST v1)",
            execution_id=execution.id,
            user=caller.user,
            enable_retry=data.enable_retry,
        )
        url = _self_url(request, factory, execution.id)
        response = notebook_response(execution, self_url=url)
        return JSONResponse(
            response.to_json(),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": url},
        )

    async def get(request: Request, factory: ApiFactory, caller: Caller) -> Response:
        flags: dict[str, bool] = {}
        for name, default in (("result", True), ("source", False)):
            raw = request.query_params.get(name)
            try:
                flags[name] = default if raw is None else _BOOL.validate_python(raw)
            except ValidationError as exc:
                detail = [
                    {"type": e["type"], "loc": ["query", name], "msg": e["msg"]}
                    for e in exc.errors(include_url=False, include_context=False)
                ]
                return JSONResponse(
                    {"detail": detail}, status_code=HTTP_422_UNPROCESSABLE_CONTENT
                )
        job_id = request.path_params["job_id"]
        service = factory.create_execution_service(caller)
        execution = await service.get(job_id)
        if execution is None:
            return _not_found()
        ipynb = None
        if flags["result"] and execution.status.is_terminal:
            ipynb = await service.get_notebook(job_id)
        source = await service.get_source_notebook(job_id) if flags["source"] else None
        url = _self_url(request, factory, job_id)
        response = notebook_response(
            execution, self_url=url, ipynb=ipynb, source=source
        )
        return JSONResponse(response.to_json())

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "metadata": {
                    "name": "noteburst",
                    "version": __version__,
                    "description": (
                        "Run Jupyter notebooks headlessly, on demand "
                        "(Rubin's Noteburst REST API v1 and a GraphQL API)."
                    ),
                }
            }
        )

    return [
        Route(f"{PREFIX}/", metadata, methods=["GET"]),
        Route(f"{PREFIX}/v1/notebooks/", guarded(submit), methods=["POST"]),
        Route(f"{PREFIX}/v1/notebooks", guarded(submit), methods=["POST"]),
        Route(
            f"{PREFIX}/v1/notebooks/{{job_id}}",
            guarded(get),
            methods=["GET"],
            name="rest_v1_notebook",
        ),
    ]
