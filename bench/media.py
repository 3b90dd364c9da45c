"""What images cost batchpipe on the client: reading and checking each distinct file,
building the requests, and filling the batch bodies with base64 or file ids.

A throwaway project with ROWS product rows over FILES distinct PNG photos (640x480, a few
KB each, so several rows share a file as catalogues do), a pipeline with one image block
and one text block; `batchpipe plan` and `batchpipe run` of one partition against a local
emulator at latency 0, inline and through the Files API. Each figure is a process's wall
time, CPU time (user + sys) and peak RSS; the emulator's own work is in its process, not
counted.

    .venv/bin/python bench/media.py [--rows 20000] [--files 1000] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchpipe.emulator.process import start as start_emulator
from bench.record import heading, write_section

TITLE = "Media: images from a path column"
PIPELINE = """\
name: photos
source: {table: photos, key: id, partition_column: day}
media: {upload: UPLOAD}
request:
  model: claude-haiku-4-5
  max_tokens: 50
  max_batch_requests: 100000
  prompt:
    - role: user
      content:
        - image: "{{ path }}"
        - text: "Write alt text for the photo of product {{ id }}."
output: {table: photos_UPLOAD, column: alt_text}
partitions: {start: 2026-11-01}
"""


def make_project(root: Path, rows: int, files: int) -> None:
    pictures = root / "pipelines" / "photos"
    pictures.mkdir(parents=True)
    for i in range(files):
        image = Image.new("RGB", (640, 480), (i * 7 % 256, i * 13 % 256, i * 29 % 256))
        ImageDraw.Draw(image).text((20, 20), f"photo {i}", fill="white")
        out = io.BytesIO()
        image.save(out, "PNG")
        (pictures / f"p{i:05d}.png").write_bytes(out.getvalue())
    con = duckdb.connect(str(root / "w.duckdb"))
    con.execute(
        "CREATE TABLE photos AS SELECT i AS id, 'photos/p' || lpad((i % $files)::VARCHAR, 5, "
        "'0') || '.png' AS path, DATE '2026-11-03' AS day FROM range($rows) t(i)",
        {"files": files, "rows": rows},
    )
    con.close()
    for upload in ("inline", "files_api"):
        text = PIPELINE.replace("UPLOAD", upload).replace("name: photos", f"name: {upload}")
        (root / "pipelines" / f"{upload}.yaml").write_text(text)


def timed(env: dict[str, str], *args: str) -> dict[str, float]:
    """One batchpipe command in a process of its own: wall, CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = process.communicate()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"batchpipe {' '.join(args)} failed:\n{out[-3000:]}")
    return {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "rss_mb": after.ru_maxrss / 1024,  # the largest child so far: runs go largest last
        "out": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=1_000)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.rows, args.files)
        emulator, url = start_emulator(root / "emulator", latency=0.0)
        env = {
            **os.environ,
            "BATCHPIPE_DB": str(root / "w.duckdb"),
            "BATCHPIPE_PIPELINES": str(root / "pipelines"),
            "BATCHPIPE_STATE": str(root / "state"),
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": "bench",
        }
        size = sum(p.stat().st_size for p in (root / "pipelines" / "photos").iterdir())
        figures = {}
        try:
            for upload in ("inline", "files_api"):
                figures[f"plan, {upload}"] = timed(env, "plan", upload, "--date", "2026-11-03")
                figures[f"run, {upload}"] = timed(env, "run", upload, "--date", "2026-11-03")
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)
    command = f".venv/bin/python bench/media.py --rows {args.rows} --files {args.files}"
    lines = [
        heading(TITLE, command),
        f"{args.rows:,} rows naming {args.files:,} distinct 640x480 PNGs ({size / 1e6:.1f} MB "
        "in all), one partition, emulator at latency 0 in its own process (not counted). "
        "Each figure is one `batchpipe` process; peak RSS is the largest process so far.\n",
        "| command | wall | CPU (user + sys) | peak RSS so far |",
        "|---|---|---|---|",
    ]
    for name, f in figures.items():
        lines.append(f"| {name} | {f['wall']:.1f} s | {f['cpu']:.1f} s | {f['rss_mb']:.0f} MB |")
    section = "\n".join(lines) + "\n"
    print(section)
    for name, f in figures.items():
        print(f"--- {name}\n{f['out'][-1500:]}")
    if args.write:
        write_section(args.write, TITLE, section)


if __name__ == "__main__":
    main()
