"""The OpenAPI description of Rubin's REST API v1, as this service answers it.

Rubin's Noteburst is a FastAPI service and publishes
``/noteburst/openapi.json``; clients and tools (code generators, API
explorers, contract tests) start there.  This module builds the same
document for :mod:`.rest_v1` from its own Pydantic models, so the schema
cannot drift from what the endpoints validate and answer: the request body
is ``NotebookRequest`` as validated, the job is ``NotebookResponse`` as
serialised, errors are Rubin's ``{"detail": [...]}`` shape.  Only the paths,
parameters and status codes are written here, once.

``tests/api/fuzz_test.py`` holds the server to this document: schemathesis
sends generated requests for every operation and checks every answer
against it (status codes, content types, bodies), and that nothing is a
server error.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from .. import __version__
from .rest_v1 import PREFIX, NotebookRequest, NotebookResponse

__all__ = [
    "ErrorDetail",
    "ErrorResponse",
    "MetadataResponse",
    "openapi_document",
    "openapi_routes",
]

_REF: Final = "#/components/schemas/{model}"
_JOB_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""What a job id looks like: Noteburst's UUIDs and Rubin's hex ids."""


class ErrorDetail(BaseModel):
    """One error, as FastAPI reports it."""

    type: str = Field(description="Machine-readable kind, e.g. 'unknown_job'.")
    loc: list[str | int] | None = Field(
        None, description="Where: ['body', field], ['path', 'job_id'], …"
    )
    msg: str = Field(description="Human-readable explanation.")


class ErrorResponse(BaseModel):
    """Every error answer: ``{"detail": [...]}``."""

    detail: list[ErrorDetail]


class Metadata(BaseModel):
    """What ``GET /noteburst/`` says about the service."""

    name: str
    version: str
    description: str


class MetadataResponse(BaseModel):
    """Body of ``GET /noteburst/``."""

    metadata: Metadata


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}


def _error(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}
        },
    }
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


def _ok(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json(model),
    }


_AUTH_ERRORS: Final = {
    "401": _error(
        "No credentials, or not valid ones.",
        **{"WWW-Authenticate": "Bearer"},
    ),
    "403": _error("Authenticated, but without Noteburst's scope (exec:notebook)."),
    "503": _error(
        "The database is unavailable right now; retry after the delay.",
        **{"Retry-After": "Seconds to wait before retrying."},
    ),
}


def _paths() -> dict[str, Any]:
    job = {
        "summary": "Get a job",
        "operationId": "getNotebookJob",
        "parameters": [
            {
                "name": "job_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": _JOB_ID_PATTERN},
            },
            {
                "name": "result",
                "in": "query",
                "required": False,
                "description": "Include the executed notebook (ipynb) once complete.",
                "schema": {"type": "boolean", "default": True},
            },
            {
                "name": "source",
                "in": "query",
                "required": False,
                "description": "Include the submitted notebook (source).",
                "schema": {"type": "boolean", "default": False},
            },
        ],
        "responses": {
            "200": _ok("NotebookResponse", "The job."),
            "404": _error("No such job, or another user's."),
            "422": _error("A bad result or source flag."),
            **_AUTH_ERRORS,
        },
    }
    submit = {
        "summary": "Submit a notebook for execution",
        "operationId": "postNotebook",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model="NotebookRequest")}
                }
            },
        },
        "responses": {
            "202": {
                **_ok("NotebookResponse", "Accepted: the job, queued (or complete)."),
                "headers": {
                    "Location": {
                        "description": "The job's URL (its self_url).",
                        "schema": {"type": "string"},
                    }
                },
            },
            "422": _error("Bad input: the field is named in loc."),
            "429": _error("A per-user limit is reached."),
            **_AUTH_ERRORS,
        },
    }
    metadata = {
        "summary": "Service metadata",
        "operationId": "getMetadata",
        "security": [],
        "responses": {"200": _ok("MetadataResponse", "Name, version, description.")},
    }
    return {
        f"{PREFIX}/": {"get": metadata},
        f"{PREFIX}/v1/notebooks/": {"post": submit},
        f"{PREFIX}/v1/notebooks/{{job_id}}": {"get": job},
    }


@cache
def _components() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (NotebookRequest, "validation"),
            (NotebookResponse, "serialization"),
            (ErrorResponse, "serialization"),
            (MetadataResponse, "serialization"),
        ],
        ref_template=_REF,
    )
    return {
        "schemas": schemas["$defs"],
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A Noteburst token (NOTEBURST_AUTH_MODE=tokens).",
            }
        },
    }


def openapi_document(root_path: str = "") -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the REST API v1.

    Parameters
    ----------
    root_path
        The mount prefix the service is served under (ASGI ``root_path``),
        the document's server URL.
    """
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Noteburst REST API v1 (Rubin-compatible)",
            "version": __version__,
            "description": (
                "Rubin Observatory's Noteburst REST API v1, served by "
                "Noteburst; see docs/rest-v1.md. Behind an ingress that "
                "authenticates (NOTEBURST_AUTH_MODE=proxy) no credentials "
                "are sent by the client."
            ),
        },
        "servers": [{"url": root_path or "/"}],
        "security": [{}, {"bearer": []}],
        "paths": _paths(),
        "components": _components(),
    }


def openapi_routes() -> list[BaseRoute]:
    """Return the route serving the document at ``/noteburst/openapi.json``.

    Public, as FastAPI's is: it describes the API, nothing of its data.
    """

    async def document(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(request.scope.get("root_path", "")))

    return [Route(f"{PREFIX}/openapi.json", document, methods=["GET"])]
