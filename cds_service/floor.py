"""The benchmark floor: a route that only parses the JSON body and returns a fixed one-card response.

Registered only when ``CDS_BENCHMARK_FLOOR`` is on, so the benchmark can compare the real hook with
the cost of merely receiving and parsing the same request on the same server.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request

from .protocol import parse_json

floor = Blueprint("floor", __name__)

_FIXED = orjson.dumps(
    {
        "cards": [
            {
                "uuid": "00000000-0000-4000-8000-000000000000",
                "summary": "Benchmark floor: request parsed",
                "indicator": "info",
                "source": {"label": "priorauth-cds benchmark"},
            }
        ]
    }
)


@floor.post("/benchmark/floor")
def parse_only() -> Response:
    """Parse the body, answer a constant card."""
    parse_json(request.get_data(cache=False))
    return Response(_FIXED, mimetype="application/json")
