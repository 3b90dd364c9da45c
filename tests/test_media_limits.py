"""Images and documents the API would refuse are refused before anything is sent: at plan
time, with the row's key, the value, the limit and the file's line, at $0."""

from __future__ import annotations

import datetime as dt
import io
import os
import random
from pathlib import Path

import anthropic
import duckdb
import pytest
from PIL import Image

from batchpipe import media, steps
from batchpipe.errors import ConfigError
from batchpipe.plan import forecast
from tests.support import batchpipe, ledger, pipeline, query

DAY = dt.date(2026, 11, 3)
FILES = "files-api-2025-04-14"


def png(width: int, height: int, noise: bool = False) -> bytes:
    """A PNG of the given size; with noise it does not compress (a big file)."""
    if noise:
        image = Image.frombytes(
            "RGB", (width, height), random.Random(7).randbytes(width * height * 3)
        )
    else:
        image = Image.new("RGB", (width, height), "#336699")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def pdf(pages: int) -> bytes:
    scans = [Image.new("L", (20, 28), 200) for _ in range(pages)]
    out = io.BytesIO()
    scans[0].save(out, "PDF", save_all=True, append_images=scans[1:])
    return out.getvalue()


def pics_project(project: Path, files: dict[str, bytes], content: str) -> Path:
    """A `pics` pipeline over a table of (id, path) rows, one per file (a value of None is a
    NULL path); `content` is the YAML of its message blocks."""
    folder = project / "pipelines"
    for name, data in files.items():
        if data is not None:
            (folder / name).write_bytes(data)
    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute("CREATE TABLE pics (id INTEGER, path VARCHAR, day DATE)")
    con.executemany(
        "INSERT INTO pics VALUES (?, ?, ?)",
        [(i, None if name == "NULL" else name, DAY) for i, name in enumerate(files, 1)],
    )
    con.close()
    path = folder / "pics.yaml"
    path.write_text(
        "name: pics\n"
        "source: {table: pics, key: id, partition_column: day}\n"
        "request:\n"
        "  model: claude-haiku-4-5\n"
        "  max_tokens: 50\n"
        "  prompt:\n"
        "    - role: user\n"
        "      content:\n" + content + "output: {table: pics_out, column: answer}\n"
        "partitions: {start: 2026-11-01}\n"
    )
    return path


def refusal(project: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        forecast(pipeline("pics"), DAY, None)
    return str(caught.value)


ONE_IMAGE = '        - image: "{{ path }}"\n        - text: "What is it?"\n'


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("gone.png", None, "cannot be read ("),
        ("NULL", None, '"" is empty: expected a file path, an http(s) URL or a BLOB'),
        ("drawing.bmp", b"BM" + bytes(60), "not a supported type (it starts with 42 4d"),
        ("wide.png", png(8001, 2), "8001x2 px, over the API's limit of 8000 px"),
        ("noise.png", png(1200, 1200, noise=True), "over the API's limit of 5,242,880 (5 MB)"),
        ("letter.pdf", pdf(1), "is application/pdf, not an image (JPEG, PNG, GIF or WebP)"),
    ],
)
def test_a_file_the_api_would_refuse_stops_the_plan_with_its_key_and_why(
    project: Path, name: str, data: bytes | None, expected: str
) -> None:
    path = pics_project(project, {"fine.png": png(10, 10), name: data}, ONE_IMAGE)
    message = refusal(project)
    assert f"{path}:9:11: request.prompt.0.content.0.image:" in message  # the block's line
    assert '1 row(s) of 2026-11-03 cannot be sent: key {"id":2}:' in message, message
    assert expected in message, message
    if name != "NULL":
        assert name in message  # the value as the table holds it
    assert "nothing was sent" in message


def test_a_row_may_name_files_only_inside_media_root(project: Path) -> None:
    """Row values are data: one naming a file outside media.root (by `..`, an absolute
    path or a link) is refused, however readable, so a table cannot send the machine's
    other files; with media.root set to their folder the same files go."""
    outside = project / "elsewhere"
    outside.mkdir()
    (outside / "notes.txt").write_text("private notes\n")
    (project / "pipelines" / "link.txt").symlink_to(outside / "notes.txt")
    path = pics_project(
        project,
        {"../elsewhere/notes.txt": None, str(outside / "notes.txt"): None, "link.txt": None},
        '        - document: "{{ path }}"\n',
    )
    message = refusal(project)
    assert "3 row(s) of 2026-11-03 cannot be sent" in message, message
    assert f"is outside media.root ({project / 'pipelines'})" in message
    assert "set media.root to a folder that holds them" in message

    root = f"media: {{root: {project}}}\npartitions:"
    path.write_text(path.read_text().replace("partitions:", root))
    con = duckdb.connect(str(project / "warehouse.duckdb"))
    con.execute("UPDATE pics SET path = 'elsewhere/notes.txt' WHERE id = 1")
    con.execute("UPDATE pics SET path = 'pipelines/link.txt' WHERE id = 3")
    con.close()
    assert "3 distinct file(s)" in forecast(pipeline("pics"), DAY, None).media


def test_the_type_comes_from_the_bytes_not_the_name(project: Path) -> None:
    """Text named .pdf goes as a text document and a PNG named .jpg as the PNG it is: the
    built request says so."""
    (project / "pipelines" / "really_png.jpg").write_bytes(png(30, 20))
    pics_project(
        project,
        {"notes.pdf": b"plain words\n"},
        '        - document: "{{ path }}"\n        - image: really_png.jpg\n',
    )
    steps.build_requests(pipeline("pics"), DAY, lambda line: None)
    ((params,),) = query(project, "SELECT CAST(params AS VARCHAR) FROM batchpipe_requests")
    assert '"source":{"type":"text","media_type":"text/plain","data":"plain words\\n"}' in params
    assert '"type":"image","source":{"type":"base64","media_type":"image/png"' in params


def test_a_request_over_the_model_s_image_count_is_refused(project: Path) -> None:
    path = pics_project(project, {"dot.png": png(4, 4)}, '        - image: "{{ path }}"\n' * 101)
    message = refusal(project)
    assert f"{path}:6" in message  # the prompt
    assert 'key {"id":1} holds 101 images' in message, message
    assert "more images than claude-haiku-4-5 takes in one request (100)" in message


def test_past_twenty_images_a_side_over_2000_px_is_refused(project: Path) -> None:
    pics_project(project, {"tall.png": png(10, 2001)}, '        - image: "{{ path }}"\n' * 21)
    message = refusal(project)
    assert 'key {"id":1} holds 21 images, one of them 2001 px a side' in message, message
    assert "past 20 images in a request the API takes at most 2000 px a side" in message
    # Twenty of them are fine: the limit is the API's, not a guess.
    pics_project_again = project / "pipelines" / "pics.yaml"
    text = pics_project_again.read_text().replace('        - image: "{{ path }}"\n', "", 1)
    pics_project_again.write_text(text)
    assert forecast(pipeline("pics"), DAY, None).requests == 1


def test_a_pdf_over_the_page_limit_is_refused_with_its_page_count(project: Path) -> None:
    pics_project(project, {"thick.pdf": pdf(101)}, '        - document: "{{ path }}"\n')
    message = refusal(project)
    assert 'key {"id":1} holds 101 PDF pages' in message, message
    assert "more PDF pages than claude-haiku-4-5 takes in one request (100)" in message


def test_a_pdf_over_32_mb_is_refused_whatever_the_upload(project: Path) -> None:
    big = pdf(1)
    big = big + b"%" + os.urandom(33 * 1024 * 1024)  # a PDF with a large trailing comment
    pics_project(project, {"huge.pdf": big}, '        - document: "{{ path }}"\n')
    message = refusal(project)
    assert "huge.pdf" in message and "over the API's 32.0 MB a PDF" in message, message


def test_media_tokens_are_width_times_height_over_750_at_the_scaled_size() -> None:
    assert media.image_tokens(750, 100) == 100
    assert media.scaled(3136, 1000) == (1568, 500)  # the long edge to 1568
    assert media.scaled(1500, 1500) == (1072, 1072)  # then to about 1.15 megapixels
    assert media.image_tokens(1500, 1500) == -(-1072 * 1072 // 750)


@pytest.mark.slow
def test_a_run_with_a_refused_file_says_so_and_sends_nothing(
    project: Path, private_emulator
) -> None:
    """The analyst's mistake costs nothing: no upload, no batch, no charge, no rows."""
    url = private_emulator()
    path = pics_project(project, {"fine.png": png(10, 10), "gone.png": None}, ONE_IMAGE)
    (project / "pipelines" / "pics.yaml").write_text(
        path.read_text().replace("partitions:", "media: {upload: files_api}\npartitions:")
    )
    ran = batchpipe("run", "pics", "--date", str(DAY))
    assert ran.returncode != 0
    assert f"{path}:9:11: request.prompt.0.content.0.image:" in ran.stderr, ran.stderr
    assert "gone.png: no such file" in ran.stderr and "Traceback" not in ran.stderr
    assert ledger(url) == []
    files = anthropic.Anthropic(api_key="test", base_url=url).beta.files.list(betas=[FILES])
    assert list(files) == []
    assert query(project, "SELECT count(*) FROM batchpipe_requests") == [(0,)]
