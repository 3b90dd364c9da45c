"""How fast the emulator takes in a batch, processes it and serves its results.

The emulator must never be what a pipeline benchmark measures: it has to accept and
serve at least 20,000 requests/s on a 2-core machine, and process (answer, bill and
write the results of) at least 40,000 requests/s, so that a million requests go through
a pipeline in about a minute. This starts a real emulator process at latency 0 and, for
plain text requests and for structured-output ones (a JSON schema with an enum and a
number field), POSTs one batch of N requests (the body is serialized before the clock
starts, so client-side JSON encoding is not counted), waits for it to end, then streams
its results and counts the lines. Last, it submits two text batches back to back, as a
pipeline pushing many batches does, and times both to ended.

    .venv/bin/python bench/emulator.py [--requests 100000] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench.record import heading, write_section
from bench.workload import STRUCT_JSON_SCHEMA  # what struct_bench asks for

HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer bench",
    "anthropic-version": "2026-10-21",
}
PROMPT = "Write a two-sentence description of this product for a catalogue: " + "x" * 230
KINDS = ("text", "structured")
ACCEPT_SERVE_TARGET = 20_000
PROCESS_TARGET = 40_000


def request_body(count: int, kind: str = "text", prefix: str = "r") -> bytes:
    requests = []
    for i in range(count):
        params: dict[str, Any] = {
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": f"{PROMPT} #{i}"}],
        }
        if kind == "structured":
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": STRUCT_JSON_SCHEMA}
            }
        requests.append({"custom_id": f"{prefix}{i}", "params": params})
    return json.dumps({"requests": requests}).encode()


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request(method, path, body=body, headers=HEADERS)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def create(port: int, body: bytes) -> str:
    status, data = call(port, "POST", "/v1/messages/batches", body)
    assert status == 200, data[:300]
    return json.loads(data)["id"]


def wait_ended(port: int, batch_id: str) -> None:
    while True:
        _, data = call(port, "GET", f"/v1/messages/batches/{batch_id}")
        if json.loads(data)["processing_status"] == "ended":
            return
        time.sleep(0.05)


def measure(port: int, count: int, kind: str) -> dict[str, float]:
    """Accept, process and serve one batch of `count` requests of `kind`."""
    body = request_body(count, kind, prefix=kind[0])
    started = time.perf_counter()
    batch_id = create(port, body)
    accept = time.perf_counter() - started

    started = time.perf_counter()
    wait_ended(port, batch_id)
    process_time = time.perf_counter() - started

    started = time.perf_counter()
    status, data = call(port, "GET", f"/v1/messages/batches/{batch_id}/results")
    serve = time.perf_counter() - started
    lines = data.count(b"\n")
    assert status == 200 and lines == count, (status, lines)
    return {
        "requests": count,
        "body_mb": len(body) / 1e6,
        "accept_s": accept,
        "accept_per_s": count / accept,
        "process_s": process_time,
        "process_per_s": count / process_time,
        "serve_s": serve,
        "serve_per_s": lines / serve,
        "results_mb": len(data) / 1e6,
    }


def back_to_back(port: int, count: int) -> dict[str, float]:
    """Two text batches submitted one after the other; seconds until both ended."""
    bodies = [request_body(count, prefix=f"b{n}_") for n in range(2)]
    started = time.perf_counter()
    ids = [create(port, body) for body in bodies]
    for batch_id in ids:
        wait_ended(port, batch_id)
    elapsed = time.perf_counter() - started
    return {"requests": 2 * count, "seconds": elapsed, "per_s": 2 * count / elapsed}


def run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state:
        process, url = start_emulator(Path(state), latency=0.0)
        port = int(url.rsplit(":", 1)[1])
        try:
            figures: dict[str, Any] = {kind: measure(port, count, kind) for kind in KINDS}
            figures["back_to_back"] = back_to_back(port, count)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return figures


TITLE = "Emulator throughput"


def _rows(kind: str, figures: dict[str, float]) -> str:
    count = f"{figures['requests']:,}"
    return (
        f"| {kind}: batch of {count} requests ({figures['body_mb']:.1f} MB) accepted in "
        f"| {figures['accept_s']:.2f} s = {figures['accept_per_s']:,.0f} requests/s |\n"
        f"| {kind}: processed (replies generated, billed, results written) in "
        f"| {figures['process_s']:.2f} s = {figures['process_per_s']:,.0f} requests/s |\n"
        f"| {kind}: results ({figures['results_mb']:.1f} MB) served in "
        f"| {figures['serve_s']:.2f} s = {figures['serve_per_s']:,.0f} lines/s |\n"
    )


def report(figures: dict[str, Any]) -> str:
    kinds = [figures[kind] for kind in KINDS]
    moved = min(min(f["accept_per_s"], f["serve_per_s"]) for f in kinds)
    processed = min(f["process_per_s"] for f in kinds)
    pair = figures["back_to_back"]
    return (
        heading(TITLE, f".venv/bin/python bench/emulator.py --requests {kinds[0]['requests']}")
        + "\n| figure | value |\n|---|---|\n"
        + "".join(_rows(kind, figures[kind]) for kind in KINDS)
        + f"| two text batches of {pair['requests'] // 2:,} submitted back to back, both "
        f"ended in | {pair['seconds']:.2f} s = {pair['per_s']:,.0f} requests/s |\n\n"
        f"Target: at least {ACCEPT_SERVE_TARGET:,} requests/s in and lines/s out: "
        f"{'meets' if moved >= ACCEPT_SERVE_TARGET else 'MISSES'}; at least "
        f"{PROCESS_TARGET:,} requests/s processed: "
        f"{'meets' if processed >= PROCESS_TARGET else 'MISSES'}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    args = parser.parse_args()
    text = report(run(args.requests))
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
