"""How fast the emulator takes in a batch, processes it and serves its results.

The emulator must never be what a pipeline benchmark measures: it has to accept and
serve at least 20,000 requests/s on a 2-core machine, and process (answer, bill and
write the results of) at least 100,000 plain text requests/s, on both cores, so that a
million requests go through a pipeline in about a minute with time to spare. This
starts a real emulator process at latency 0 and, for plain text requests and for
structured-output ones (a JSON schema with an enum and a number field), POSTs one batch
of N requests (the body is serialized before the clock starts, so client-side JSON
encoding is not counted), waits for it to end, then streams its results and counts the
lines. Last, it submits two text batches back to back, as a
pipeline pushing many batches does, and times both to ended.

    .venv/bin/python bench/emulator.py [--requests 100000] [--write bench/RESULTS.md]

`--soak 100` instead sends 100 batches back to back (10 million requests at the default
size) and reports the emulator's peak memory and how long other calls waited meanwhile.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import sys
import tempfile
import threading
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
PROCESS_TARGET = 100_000


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


def _memory_mb(pid: int) -> float:
    """What the emulator and its forked children hold, MB: their proportional set sizes,
    so memory the children share with it is counted once."""
    pids = [pid]
    for name in os.listdir("/proc"):
        try:
            if (
                name.isdigit()
                and int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
            ):
                pids.append(int(name))
        except OSError:
            continue
    total = 0
    for one in pids:
        try:
            rollup = Path(f"/proc/{one}/smaps_rollup").read_text()
        except OSError:
            continue
        total += int(
            next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:"))
        )
    return total / 1024


def soak(count: int, batches: int) -> dict[str, Any]:
    """`batches` text batches of `count` requests sent back to back by one thread, while
    another polls each until it ended, downloads its results and deletes it (so the
    disk holds a few at a time), and a third retrieves a small ended batch five times a
    second; the emulator's memory sampled all along."""
    body = request_body(count)
    ids: queue.Queue[str] = queue.Queue()
    calls: dict[str, list[float]] = {"create": [], "poll": [], "download": [], "other retrieve": []}
    peak, done = [0.0], threading.Event()

    def timed(kind: str, work: Any, *args: Any) -> Any:
        started = time.perf_counter()
        result = work(*args)
        calls[kind].append(time.perf_counter() - started)
        return result

    def send() -> None:
        for _ in range(batches):
            ids.put(timed("create", create, port, body))

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], _memory_mb(process.pid))

    def ping() -> None:  # a retrieve of an ended batch: what any other client waits
        small = create(port, request_body(1, prefix="ping"))
        wait_ended(port, small)
        while not done.wait(0.2):
            timed("other retrieve", call, port, "GET", f"/v1/messages/batches/{small}")

    with tempfile.TemporaryDirectory() as state:
        process, url = start_emulator(Path(state), latency=0.0)
        port = int(url.rsplit(":", 1)[1])
        threads = [threading.Thread(target=work, daemon=True) for work in (send, sample, ping)]
        started = time.perf_counter()
        try:
            for thread in threads:
                thread.start()
            for _ in range(batches):
                batch_id = ids.get()
                while True:
                    _, data = timed("poll", call, port, "GET", f"/v1/messages/batches/{batch_id}")
                    if json.loads(data)["processing_status"] == "ended":
                        break
                    time.sleep(0.05)
                path = f"/v1/messages/batches/{batch_id}/results"
                status, data = timed("download", call, port, "GET", path)
                assert status == 200 and data.count(b"\n") == count, status
                call(port, "DELETE", f"/v1/messages/batches/{batch_id}")
            elapsed = time.perf_counter() - started
        finally:
            done.set()
            process.terminate()
            process.wait(timeout=30)
    return {"requests": count * batches, "seconds": elapsed, "peak_mb": peak[0], "calls": calls}


def soak_report(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['requests']:,} requests in {figures['seconds']:.1f} s = "
        f"{figures['requests'] / figures['seconds']:,.0f} requests/s; "
        f"peak memory (PSS, emulator and children) {figures['peak_mb']:,.0f} MB"
    ]
    for kind, times in figures["calls"].items():
        ordered = sorted(times)
        lines.append(
            f"{kind}: {len(times)} calls, median {ordered[len(ordered) // 2]:.3f} s, "
            f"slowest {ordered[-1]:.3f} s"
        )
    return "\n".join(lines) + "\n"


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
    processed = figures["text"]["process_per_s"]
    pair = figures["back_to_back"]
    return (
        heading(TITLE, f".venv/bin/python bench/emulator.py --requests {kinds[0]['requests']}")
        + "\n| figure | value |\n|---|---|\n"
        + "".join(_rows(kind, figures[kind]) for kind in KINDS)
        + f"| two text batches of {pair['requests'] // 2:,} submitted back to back, both "
        f"ended in | {pair['seconds']:.2f} s = {pair['per_s']:,.0f} requests/s |\n\n"
        f"Target: at least {ACCEPT_SERVE_TARGET:,} requests/s in and lines/s out: "
        f"{'meets' if moved >= ACCEPT_SERVE_TARGET else 'MISSES'}; at least "
        f"{PROCESS_TARGET:,} requests/s processed (the text batch): "
        f"{'meets' if processed >= PROCESS_TARGET else 'MISSES'} (the structured one: "
        f"{figures['structured']['process_per_s']:,.0f}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--write", type=Path, help="replace this section of a RESULTS.md")
    parser.add_argument(
        "--soak", type=int, metavar="BATCHES", help="instead: BATCHES batches back to back"
    )
    args = parser.parse_args()
    if args.soak:
        print(soak_report(soak(args.requests, args.soak)))
        return
    text = report(run(args.requests))
    print(text)
    if args.write:
        write_section(args.write, TITLE, text)


if __name__ == "__main__":
    main()
