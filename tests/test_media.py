"""Images and PDFs from table columns, end to end against the emulator: each answer is about
its own row's file (the emulator's reply names the bytes it was sent by their SHA-256),
identical content is sent once, Files API uploads are made once and replaced when gone, and
a partition of large files goes out in as many batches as its bytes need."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import http.server
import io
import json
import signal
import threading
import urllib.request
from pathlib import Path

import anthropic
import duckdb
import pytest
from PIL import Image

from batchpipe.defs.resources import BatchpipeResource
from batchpipe.plan import forecast
from batchpipe.runs import run_partition
from tests.support import advance_emulator_clock, batchpipe, ledger, pipeline, query, request_of

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 3)
FAST = BatchpipeResource(poll_seconds=0.1, wait=True)
FILES = "files-api-2025-04-14"
MEDIA = Path(__file__).resolve().parent.parent / "pipelines" / "media"


def sha12(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


def emulator_files(url: str) -> dict:
    """The emulator's own count of uploads and deletes (the referee's, not batchpipe's)."""
    with urllib.request.urlopen(f"{url}/_emulator/files", timeout=5) as response:
        return json.loads(response.read())


def files_upstream(url: str) -> list:
    api = anthropic.Anthropic(api_key="test", base_url=url)
    return list(api.beta.files.list(betas=[FILES]))


def scans_pipeline(project: Path, document: str, upload: str = "files_api") -> None:
    """A text-output pipeline over the demo invoices, so each reply names the document it
    was sent (a structured reply carries no such line)."""
    (project / "pipelines" / "scans.yaml").write_text(
        "name: scans\n"
        "source: {table: invoices, key: invoice_no, partition_column: received_on}\n"
        f"media: {{upload: {upload}}}\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 100\n"
        "  prompt:\n"
        "    - role: user\n"
        "      content:\n"
        f'        - {{document: "{document}", title: "{{{{ invoice_no }}}}"}}\n'
        '        - {text: "Read invoice {{ invoice_no }}."}\n'
        "output: {table: scans_out, column: answer}\n"
        "partitions: {start: 2026-11-01}\n"
    )


def test_each_photo_s_answer_is_about_its_own_photo_and_a_rerun_costs_nothing(
    demo_db: Path, private_emulator
) -> None:
    url = private_emulator()
    lines = run_partition(pipeline("photo_alt_text"), DAY, FAST)

    rows = query(
        demo_db,
        "SELECT photo, alt_text, input_tokens, result_status FROM photo_alt_text ORDER BY 1",
    )
    assert len(rows) == 3
    for photo, alt_text, input_tokens, status in rows:
        data = (demo_db / "pipelines" / photo).read_bytes()
        kind = "image/jpeg" if photo.endswith(".jpg") else "image/png"
        assert status == "succeeded"
        assert f"[image {kind} 160x120 {len(data)} bytes {sha12(data)}]" in alt_text, alt_text
        assert input_tokens >= -(-160 * 120 // 750)  # the image was counted and billed
    billed = ledger(url)
    assert len(billed) == 3 and len({request_of(e["custom_id"]) for e in billed}) == 3
    assert any(line.startswith("cost:") for line in lines)
    assert "; 3 distinct media file(s), ~78 tokens" in lines[0], lines  # 3 x ceil(160x120/750)

    again = run_partition(pipeline("photo_alt_text"), DAY, FAST)
    assert "3 built, 0 to send, 3 reused" in again[0], again
    assert len(ledger(url)) == 3
    assert query(demo_db, "SELECT count(*) FROM batchpipe_media") == [(3,)]


def test_a_moved_photo_with_the_same_bytes_is_the_same_request(
    demo_db: Path, private_emulator
) -> None:
    """The request names the bytes' hash, not the path: a copy elsewhere reuses the answer."""
    private_emulator()
    run_partition(pipeline("photo_alt_text"), DAY, FAST)
    moved = demo_db / "pipelines" / "moved"
    moved.mkdir()
    for (photo,) in query(demo_db, "SELECT DISTINCT photo FROM product_photos"):
        (moved / Path(photo).name).write_bytes((demo_db / "pipelines" / photo).read_bytes())
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute("UPDATE product_photos SET photo = replace(photo, 'media/', 'moved/')")
    con.close()
    again = run_partition(pipeline("photo_alt_text"), DAY, FAST)
    assert "3 built, 0 to send, 3 reused" in again[0], again


def test_files_api_uploads_each_distinct_file_once_and_reuses_it_on_later_runs(
    demo_db: Path, private_emulator
) -> None:
    url = private_emulator()
    scans_pipeline(demo_db, "{{ scan }}")
    run_partition(pipeline("scans"), DAY, FAST)
    uploaded = files_upstream(url)
    assert len(uploaded) == 3 and {f.mime_type for f in uploaded} == {"application/pdf"}
    for scan, answer in query(
        demo_db, "SELECT i.scan, s.answer FROM scans_out s JOIN invoices i USING (invoice_no)"
    ):
        data = (demo_db / "pipelines" / scan).read_bytes()
        assert f"{len(data)} bytes {sha12(data)}]" in answer, answer
        assert answer.count("[document application/pdf") == 1
    recorded = query(demo_db, "SELECT file_id FROM batchpipe_uploads WHERE gone_at IS NULL")
    assert {r[0] for r in recorded} == {f.id for f in uploaded}

    # The same files named by another day's rows: no upload again, only new requests.
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute("UPDATE invoices SET scan = 'media/INV-2605.pdf' WHERE received_on = '2026-11-01'")
    con.close()
    run_partition(pipeline("scans"), dt.date(2026, 11, 1), FAST)
    assert len(files_upstream(url)) == 3
    assert query(demo_db, "SELECT count(*) FROM scans_out") == [(6,)]


def test_a_document_every_row_shares_is_uploaded_once_and_again_when_gone(
    demo_db: Path, private_emulator
) -> None:
    """One catalogue for every row: one upload. Deleted upstream, it is found gone before
    the next send and uploaded again; expired (the emulator's clock 31 days on), again."""
    url = private_emulator()
    scans_pipeline(demo_db, "media/INV-2601.pdf")
    shared = (MEDIA / "INV-2601.pdf").read_bytes()
    run_partition(pipeline("scans"), DAY, FAST)
    (first,) = files_upstream(url)
    answers = [a for (a,) in query(demo_db, "SELECT answer FROM scans_out")]
    assert len(answers) == 3 and all(sha12(shared) in a for a in answers)

    api = anthropic.Anthropic(api_key="test", base_url=url)
    api.beta.files.delete(first.id, betas=[FILES])
    run_partition(pipeline("scans"), dt.date(2026, 11, 2), FAST)
    (second,) = files_upstream(url)
    assert second.id != first.id
    assert query(demo_db, "SELECT count(*) FROM scans_out WHERE result_status = 'succeeded'") == [
        (6,)
    ]

    advance_emulator_clock(url, 31 * 86400)
    run_partition(pipeline("scans"), dt.date(2026, 11, 1), FAST)
    live = files_upstream(url)
    assert len(live) == 1 and live[0].id not in (first.id, second.id)
    counts = emulator_files(url)
    assert (counts["uploads"], counts["deletes"]) == (3, 1), counts
    assert query(demo_db, "SELECT count(*) FROM scans_out WHERE result_status = 'succeeded'") == [
        (9,)
    ]


def test_large_pdfs_go_out_in_as_many_batches_as_their_bytes_need(
    demo_db: Path, private_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven inline PDFs, over 100 KB of base64 in all, under a 50 KB batch limit that the
    emulator enforces too (413 past it): at least three batches, each request paid once."""
    limit = 50_000
    url = private_emulator("--max-batch-bytes", str(limit))
    monkeypatch.setenv("BATCHPIPE_MAX_BATCH_BYTES", str(limit))
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute(
        "UPDATE invoices SET received_on = DATE '2026-11-03' WHERE invoice_no IN "
        "(SELECT invoice_no FROM invoices ORDER BY invoice_no LIMIT 6 OFFSET 3)"
    )
    rows = con.execute("SELECT scan FROM invoices WHERE received_on = '2026-11-03'").fetchall()
    con.close()
    sizes = [len((demo_db / "pipelines" / scan).read_bytes()) for (scan,) in rows]
    assert len(rows) == 7 and sum(sizes) * 4 / 3 > 2 * limit, sizes
    scans_pipeline(demo_db, "{{ scan }}", upload="inline")

    run_partition(pipeline("scans"), DAY, FAST)

    batches = query(demo_db, "SELECT batch_id, succeeded FROM batchpipe_batches ORDER BY 1")
    assert len(batches) >= 3 and sum(s for _, s in batches) == 7, batches
    billed = [request_of(e["custom_id"]) for e in ledger(url)]
    assert len(billed) == len(set(billed)) == 7
    assert query(demo_db, "SELECT count(*) FROM scans_out WHERE answer LIKE '%sha256:%'") == [(7,)]


def test_a_blob_column_is_sent_as_the_image_it_holds(demo_db: Path, private_emulator) -> None:
    private_emulator()
    images = {}
    for i, colour in enumerate(["red", "green", "blue"], 1):
        out = io.BytesIO()
        Image.new("RGB", (40 * i, 30), colour).save(out, "GIF")
        images[i] = out.getvalue()
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute("CREATE TABLE swatches (id INTEGER, picture BLOB, day DATE)")
    con.executemany(
        "INSERT INTO swatches VALUES (?, ?, ?)", [(i, d, DAY) for i, d in images.items()]
    )
    con.close()
    (demo_db / "pipelines" / "swatches.yaml").write_text(
        "name: swatches\n"
        "source: {table: swatches, key: id, partition_column: day, columns: [id]}\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 50\n"
        "  prompt:\n"
        "    - role: user\n"
        "      content: [{image: '{{ picture }}'}, {text: 'Name this colour.'}]\n"
        "output: {table: swatch_names, column: name}\n"
        "partitions: {start: 2026-11-01}\n"
    )
    run_partition(pipeline("swatches"), DAY, FAST)
    for i, name in query(demo_db, "SELECT id, name FROM swatch_names ORDER BY id"):
        data = images[i]
        assert f"[image image/gif {40 * i}x30 {len(data)} bytes {sha12(data)}]" in name, name


@pytest.fixture
def served(tmp_path: Path):
    """An http server on 127.0.0.1 serving a folder, as a bucket or CDN would."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def url_pipeline(project: Path, base: str, fetch_urls: bool) -> dict[int, bytes]:
    """A `shots` pipeline over three image URLs; returns each row's bytes."""
    images = {}
    for i in (1, 2, 3):
        out = io.BytesIO()
        Image.new("RGB", (100 * i, 50), "#55aa00").save(out, "WEBP")
        images[i] = out.getvalue()
    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute("CREATE TABLE shots (id INTEGER, url VARCHAR, day DATE)")
    con.executemany(
        "INSERT INTO shots VALUES (?, ?, ?)", [(i, f"{base}/shot{i}.webp", DAY) for i in images]
    )
    con.close()
    (project / "pipelines" / "shots.yaml").write_text(
        "name: shots\n"
        "source: {table: shots, key: id, partition_column: day}\n"
        f"media: {{fetch_urls: {str(fetch_urls).lower()}}}\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 50\n"
        "  prompt:\n"
        "    - role: user\n"
        "      content: [{image: '{{ url }}'}, {text: 'What is on this screenshot?'}]\n"
        "output: {table: shot_notes, column: note}\n"
        "partitions: {start: 2026-11-01}\n"
    )
    return images


@pytest.mark.parametrize("fetch_urls", [False, True])
def test_an_image_url_is_sent_as_a_url_unless_batchpipe_is_told_to_fetch_it(
    demo_db: Path, private_emulator, served, fetch_urls: bool
) -> None:
    """By default the API fetches the URL (the emulator, from loopback only) and batchpipe
    never reads it; with fetch_urls batchpipe downloads it and sends the bytes."""
    url = private_emulator()
    folder, base = served
    images = url_pipeline(demo_db, base, fetch_urls)
    for i, data in images.items():
        (folder / f"shot{i}.webp").write_bytes(data)

    run_partition(pipeline("shots"), DAY, FAST)

    for i, note in query(demo_db, "SELECT id, note FROM shot_notes ORDER BY id"):
        data = images[i]
        assert f"[image image/webp {100 * i}x50 {len(data)} bytes {sha12(data)}]" in note, note
    fetched_by_the_api = emulator_files(url)["url_fetches"]
    assert fetched_by_the_api == (0 if fetch_urls else 3)
    kept = query(demo_db, "SELECT count(*) FROM batchpipe_media")
    assert kept == [(3 if fetch_urls else 0,)]


def test_plan_counts_the_media_with_count_tokens_when_an_api_is_reachable(
    demo_db: Path, private_emulator
) -> None:
    """With an API reachable, count_tokens counts a sample with the bytes inline: the three
    160x120 photos add 3 x ceil(160 x 120 / 750) tokens to the count of the same prompts
    without them, the estimate offline says so too, and counting sends nothing."""
    url = private_emulator()
    api = anthropic.Anthropic(api_key="test", base_url=url)
    offline = forecast(pipeline("photo_alt_text"), DAY, None)
    counted = forecast(pipeline("photo_alt_text"), DAY, api)
    assert "no API to count with" in offline.estimate.input.basis
    assert "count_tokens" in counted.estimate.input.basis, counted.estimate.input.basis
    assert "(78 estimated tokens to send, from 3 distinct file(s)" in offline.media, offline.media

    photos = demo_db / "pipelines" / "photo_alt_text.yaml"
    photos.write_text(photos.read_text().replace('        - image: "{{ photo }}"\n', ""))
    text_only = forecast(pipeline("photo_alt_text"), DAY, api)
    media_tokens = counted.estimate.whole.input_tokens - text_only.estimate.whole.input_tokens
    assert media_tokens == 3 * -(-160 * 120 // 750), (counted.lines(), text_only.lines())
    assert ledger(url) == []


def test_a_run_killed_after_an_upload_is_recovered_by_running_again(
    demo_db: Path, private_emulator
) -> None:
    """Killed between the upload and its record: nothing was sent, so the next run uploads
    the file again (free; the orphan expires) and every row is answered once."""
    url = private_emulator()
    scans_pipeline(demo_db, "media/INV-2601.pdf")
    killed = batchpipe(
        "run", "scans", "--date", str(DAY), env={"BATCHPIPE_KILL_AT": "after_upload"}
    )
    assert killed.returncode == -signal.SIGKILL
    assert query(demo_db, "SELECT count(*) FROM batchpipe_uploads") == [(0,)]

    again = batchpipe("run", "scans", "--date", str(DAY))
    assert again.returncode == 0, again.stderr
    assert emulator_files(url)["uploads"] == 2
    billed = [request_of(e["custom_id"]) for e in ledger(url)]
    assert len(billed) == len(set(billed)) == 3
    assert query(demo_db, "SELECT count(*) FROM scans_out WHERE result_status = 'succeeded'") == [
        (3,)
    ]


def test_files_api_requests_are_counted_with_their_bytes_inline(
    demo_db: Path, private_emulator
) -> None:
    """count_tokens takes no file ids without the beta: the sample goes with each file's
    bytes as a base64 source instead, so a files_api pipeline is counted, not guessed."""
    url = private_emulator()
    scans_pipeline(demo_db, "{{ scan }}")
    counted = forecast(pipeline("scans"), DAY, anthropic.Anthropic(api_key="t", base_url=url))
    basis = counted.estimate.input.basis
    assert basis.startswith("count_tokens on") and "failed" not in basis, basis
    assert files_upstream(url) == []  # a plan uploads nothing


def test_a_batch_of_more_lines_than_one_slice_of_its_body_is_sent_whole(
    demo_db: Path, private_emulator
) -> None:
    """A body is read from DuckDB 10,000 lines at a time while the media's bytes are read
    beside it: 10,050 requests naming one photo go out as one batch, every line of it."""
    url = private_emulator()
    rows = 10_050
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute(
        "CREATE TABLE many AS SELECT i AS id, 'media/photo_01.png' AS photo, "
        f"DATE '2026-11-03' AS day FROM range({rows}) t(i)"
    )
    con.close()
    (demo_db / "pipelines" / "many.yaml").write_text(
        "name: many\n"
        "source: {table: many, key: id, partition_column: day}\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 100\n"
        "  canary: 0\n"
        "  prompt:\n"
        "    - role: user\n"
        "      content: [{image: '{{ photo }}'}, {text: 'Alt text for product {{ id }}.'}]\n"
        "output: {table: many_out, column: alt_text}\n"
        "partitions: {start: 2026-11-01}\n"
    )
    run_partition(pipeline("many"), DAY, FAST)
    photo = (MEDIA / "photo_01.png").read_bytes()
    assert query(
        demo_db, f"SELECT count(*) FROM many_out WHERE alt_text LIKE '%{sha12(photo)}]%'"
    ) == [(rows,)]
    assert query(demo_db, "SELECT count(*) FROM batchpipe_batches") == [(1,)]
    assert len(ledger(url)) == rows


def test_the_kept_bytes_may_be_deleted_the_next_run_reads_the_files_again(
    demo_db: Path, private_emulator
) -> None:
    """batchpipe_media is a copy: emptied, the next run stores what it sends again."""
    private_emulator()
    run_partition(pipeline("photo_alt_text"), DAY, FAST)
    con = duckdb.connect(str(demo_db / "warehouse.duckdb"))
    con.execute("DELETE FROM batchpipe_media")
    con.close()
    run_partition(pipeline("photo_alt_text"), dt.date(2026, 11, 4), FAST)
    assert query(
        demo_db, "SELECT count(*) FROM photo_alt_text WHERE alt_text LIKE '%[image image/%'"
    ) == [(6,)]
    assert query(demo_db, "SELECT count(*) FROM batchpipe_media") == [(3,)]
