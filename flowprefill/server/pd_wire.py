"""The internal wire format of `deploy=pd`: what the proxy and the workers send each other.

Requests travel with their arrival expressed as `age` (seconds since the proxy stamped it),
so each worker re-stamps it on its own clock: deadlines stay right across processes and
machines without synchronized clocks. Torch-free; must not know about engines or NIXL.
"""

from __future__ import annotations

import dataclasses
import math

from fastapi import Request as HTTPRequest

from flowprefill.core import SLO, Request
from flowprefill.engine.api import SamplingParams

PREFILL = "prefill"
DECODE = "decode"


def _num(x: float) -> float | str:
    return "inf" if math.isinf(x) else x  # JSON has no infinity


def request_to_wire(r: Request, now: float) -> dict:
    return {"request_id": r.request_id, "age": max(0.0, now - r.arrival),
            "prompt_token_ids": list(r.prompt_token_ids or ()), "max_tokens": r.max_tokens,
            "ttft": _num(r.slo.ttft), "tbt": _num(r.slo.tbt), "slo_class": r.slo.slo_class}


def request_from_wire(d: dict, now: float) -> Request:
    ids = tuple(d["prompt_token_ids"])
    return Request(request_id=d["request_id"], arrival=now - float(d["age"]),
                   prompt_len=len(ids), prompt_token_ids=ids, max_tokens=d["max_tokens"],
                   slo=SLO(float(d["ttft"]), float(d["tbt"]), d["slo_class"]))


def sampling_to_wire(s: SamplingParams) -> dict:
    return dataclasses.asdict(s)


def sampling_from_wire(d: dict) -> SamplingParams:
    return SamplingParams(**d)


async def wait_disconnect(raw: HTTPRequest) -> None:
    """Returns when the peer closes the connection (the body is already read)."""
    while (await raw.receive())["type"] != "http.disconnect":
        pass
