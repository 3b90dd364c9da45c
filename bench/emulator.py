"""How fast the emulator takes in a batch and serves its results.

The emulator must never be what a pipeline benchmark measures, so it has to
accept and serve at least 20,000 requests/s on a 2-core machine. This starts a
real emulator process, POSTs one batch of N requests (the body is serialized
before the clock starts, so client-side JSON encoding is not counted), waits for
it to end, then streams its results and counts the lines.

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.record import heading, write_section
from tests.support import start_emulator

HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer bench",
    "anthropic-version": "2026-10-21",
}
PROMPT = "Write a two-sentence description of this product for a catalogue: " + "x" * 230


def request_body(count: int) -> bytes:
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": f"{PROMPT} #{i}"}],
            },
        }
        for i in range(count)
    ]
    return json.dumps({"requests": requests}).encode()


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request(method, path, body=body, headers=HEADERS)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def measure(count: int) -> dict[str, float]:
    body = request_body(count)
    with tempfile.TemporaryDirectory() as state:
        process, url = start_emulator(Path(state), latency=0.0)
        port = int(url.rsplit(":", 1)[1])
        try:
            started = time.perf_counter()
            status, data = call(port, "POST", "/v1/messages/batches", body)
            accept = time.perf_counter() - started
            assert status == 200, data[:300]
            batch_id = json.loads(data)["id"]

            started = time.perf_counter()
            while True:
                _, data = call(port, "GET", f"/v1/messages/batches/{batch_id}")
                if json.loads(data)["processing_status"] == "ended":
                    break
                time.sleep(0.05)
            process_time = time.perf_counter() - started

            started = time.perf_counter()
            status, data = call(port, "GET", f"/v1/messages/batches/{batch_id}/results")
            serve = time.perf_counter() - started
            lines = data.count(b"\n")
            assert status == 200 and lines == count, (status, lines)
        finally:
            process.terminate()
            process.wait(timeout=30)
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


TITLE = "Emulator throughput"


def report(figures: dict[str, float]) -> str:
    verdict = (
        "meets" if min(figures["accept_per_s"], figures["serve_per_s"]) >= 20_000 else "MISSES"
    )
    return (
        heading(TITLE, f".venv/bin/python bench/emulator.py --requests {figures['requests']}")
        + "\n"
        f"| figure | value |\n|---|---|\n"
        f"| batch of {figures['requests']:,} requests ({figures['body_mb']:.1f} MB) accepted in "
        f"| {figures['accept_s']:.2f} s = {figures['accept_per_s']:,.0f} requests/s |\n"
        f"| processed (replies generated, results written) in "
        f"| {figures['process_s']:.2f} s = {figures['process_per_s']:,.0f} requests/s |\n"
        f"| results ({figures['results_mb']:.1f} MB) served in "
        f"| {figures['serve_s']:.2f} s = {figures['serve_per_s']:,.0f} lines/s |\n\n"
        f"Target: at least 20,000 requests/s in and 20,000 lines/s out: {verdict}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    args = parser.parse_args()
    text = report(measure(args.requests))
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
