"""Fuzz a service's published contract (/openapi.json) with schemathesis: every operation gets
`--examples` valid and `--examples` invalid requests (hypothesis, derandomized so a run repeats), and
every answer is checked to be no server error (5xx) and, for an error, OpenAI-shaped JSON.

    python -m scripts.contract_fuzz http://127.0.0.1:8080 --examples 20

The suite runs it against a real gateway and a real worker (tests/gateway/test_contract.py,
tests/e2e/test_worker_contract.py); scripts/bench_chaos.py runs it as one of its faults.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

CALL_TIMEOUT_S = 120
# SGLang answers a refused /flush_cache in plain text; the worker keeps its shape for SGLang's clients
TEXT_ERRORS = ("/flush_cache",)


@dataclass
class FuzzReport:
    calls: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # "METHOD path -> status: body"
    bad_errors: list[str] = field(default_factory=list)  # a 4xx whose body is not OpenAI's error shape
    operations: int = 0

    def ok(self) -> bool:
        return not self.server_errors and not self.bad_errors


def _openai_error(resp: requests.Response) -> bool:
    try:
        body = resp.json()
    except ValueError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


def fuzz(base_url: str, examples: int = 10, skip: tuple[str, ...] = (), progress=None) -> FuzzReport:
    """Fuzz every operation of `base_url`/openapi.json except the paths in `skip`; `progress(op)` is called
    before each operation."""
    schema = schemathesis.openapi.from_url(base_url.rstrip("/") + "/openapi.json")
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in skip:
            continue
        report.operations += 1
        if progress is not None:
            progress(f"{op.method.upper()} {op.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(op, mode, base_url, session, examples, report)
    return report


def _fuzz_operation(op, mode, base_url: str, session: requests.Session, examples: int, report: FuzzReport) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        try:
            resp = case.call(base_url=base_url, session=session, timeout=CALL_TIMEOUT_S, stream=False)
        except requests.RequestException as exc:  # a dropped connection is as bad as a 500
            report.server_errors.append(f"{case.method} {case.formatted_path}: no answer ({exc!r})")
            return
        report.calls += 1
        report.by_status[resp.status_code] = report.by_status.get(resp.status_code, 0) + 1
        what = f"{case.method} {case.formatted_path} -> {resp.status_code}: {resp.text[:300]!r}"
        if resp.status_code >= 500:
            report.server_errors.append(what + f" (body sent: {json.dumps(case.body, default=str)[:300]})")
        elif resp.status_code >= 400 and op.path not in TEXT_ERRORS and not _openai_error(resp):
            report.bad_errors.append(what)

    try:
        run()
    except Unsatisfiable:  # no invalid request exists for an operation without parameters or body
        if mode is not GenerationMode.NEGATIVE:
            raise


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the service's base URL")
    p.add_argument("--examples", type=int, default=10, help="requests per operation and mode (valid, invalid)")
    p.add_argument("--skip", action="append", default=[], help="a path not to fuzz (repeatable)")
    args = p.parse_args()
    from rich.console import Console

    console = Console(stderr=True)
    report = fuzz(args.url, args.examples, tuple(args.skip), progress=lambda op: console.log(op))
    print(json.dumps({"calls": report.calls, "operations": report.operations, "by_status": report.by_status,
                      "server_errors": report.server_errors, "bad_errors": report.bad_errors}, indent=1))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
