"""Trace tool: extract a window from a trace and write it as canonical JSONL.

    python traces/convert.py in=../shared/traces/azure_llm_2023_conv.csv format=azure \
        out=traces/out/conv_0_120.jsonl start=0 end=120

Arguments are key=value. `in` (the trace; relative paths also tried from the project root),
`format` (qwen | azure | mooncake | canonical | auto; default auto), `out` (default
traces/out/<stem>_<start>_<end>.jsonl), and any other `WorkloadConfig` field: `start`/`end`
(seconds from the first request), `rate_scale`, `max_requests`, `max_prompt_len`, or, with
`format=synthetic` and no `in`, the generator's `preset`, `rate`, `arrival`, `cv`,
`num_requests`, `seed`. Output times start at 0. Prints a one-line summary.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from flowprefill.config import WorkloadConfig, choices  # noqa: E402
from flowprefill.workload import load_workload, project_root, write_canonical  # noqa: E402


def _coerce(value: str, tp: typing.Any) -> typing.Any:
    if value.lower() in ("null", "none", ""):
        return None
    if (allowed := choices(tp)) is not None:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {' | '.join(allowed)}")
        return value
    kinds = [t for t in typing.get_args(tp) if t is not type(None)] or [tp]
    for kind in (int, float, str):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                continue
    raise ValueError(f"cannot read {value!r} as {tp}")


def parse_args(argv: list[str]) -> tuple[WorkloadConfig, Path]:
    hints = typing.get_type_hints(WorkloadConfig)
    fields = {f.name for f in dataclasses.fields(WorkloadConfig)}
    kwargs: dict[str, typing.Any] = {"format": "auto"}
    out: str | None = None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {arg!r}\n\n{__doc__}")
        if key == "in":
            key = "path"
        if key == "out":
            out = value
        elif key in fields:
            kwargs[key] = _coerce(value, hints[key])
        else:
            raise SystemExit(f"unknown argument {key!r}\n\n{__doc__}")
    if kwargs["format"] != "synthetic" and not kwargs.get("path"):
        raise SystemExit(f"missing in=PATH\n\n{__doc__}")
    wcfg = WorkloadConfig(**kwargs)
    if out is None:
        stem = Path(wcfg.path).stem if wcfg.path else wcfg.preset
        window = f"_{wcfg.start or 0:g}_{wcfg.end:g}" if wcfg.end is not None else ""
        out = str(project_root() / "traces" / "out" / f"{stem}{window}.jsonl")
    return wcfg, Path(out)


def main(argv: list[str]) -> int:
    wcfg, out = parse_args(argv)
    records = load_workload(wcfg)
    n = write_canonical(records, out)
    span = records[-1].timestamp if records else 0.0
    print(f"wrote {n} requests spanning {span:.1f} s to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
