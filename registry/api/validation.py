"""The body of a 422: one shape for FastAPI's validation errors and the fast routes' own."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["invalid_response", "json_safe"]

FIELDS = ("type", "loc", "msg", "input")


def json_safe(value: Any) -> Any:
    """`value` if it serialises as strict JSON, else its repr (NaN, bytes, objects)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def invalid_response(
    errors: Iterable[Mapping[str, Any]], *, loc_prefix: Sequence[str] = ()
) -> JSONResponse:
    """422 listing each error's type, location (after `loc_prefix`), message and input."""
    detail = []
    for err in errors:
        item = {k: json_safe(err[k]) for k in FIELDS if k in err}
        item["loc"] = [*loc_prefix, *err["loc"]]
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)
