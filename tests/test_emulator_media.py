"""Images, documents and the Files API, as a user of the official SDK meets them against a
real emulator process: what each costs in tokens (by this file's own arithmetic, the
rule the emulator documents), the line each reply names it by, every refusal the real
API gives for bad media (a 400 from /v1/messages and count_tokens, an errored line in a
batch), file ids in batches, expiry on the emulator's clock, URL sources served from
loopback, and the batch body limit. Pictures and PDFs are made with Pillow and pypdf
here; the emulator reads them with its own stdlib parsers."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import math
import re
import threading
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from PIL import Image

from tests.support import advance_emulator_clock, start_emulator, wait_ended

pytestmark = pytest.mark.slow

MODEL = "claude-haiku-4-5"  # a 200k context window: 100 images or PDF pages a request
BIG_MODEL = "claude-sonnet-4-6"  # a 1M window: 600
FILES_BETA = "files-api-2025-04-14"
BETA_HEADERS = {"anthropic-beta": FILES_BETA}
QUESTION = {"type": "text", "text": "What is this?"}
UNREACHABLE = "Unable to download the file. Please verify the URL and try again."


# The token rule, written out independently of the emulator.


def text_tokens(text: str) -> int:
    """ceil(len/4) per word or punctuation run; whitespace is free."""
    return sum(math.ceil(len(run) / 4) for run in re.findall(r"\w+|[^\w\s]+", text))


def scaled(width: int, height: int) -> tuple[int, int]:
    """Long edge to 1568 px, then area to 1,150,000 px, each side rounded down."""
    if max(width, height) > 1568:
        longest = max(width, height)
        width, height = max(1, width * 1568 // longest), max(1, height * 1568 // longest)
    if width * height > 1_150_000:
        scale = math.sqrt(1_150_000 / (width * height))
        width, height = math.floor(width * scale + 1e-9), math.floor(height * scale + 1e-9)
        while width * height > 1_150_000:
            width, height = (width - 1, height) if width >= height else (width, height - 1)
    return width, height


def image_tokens(width: int, height: int) -> int:
    w, h = scaled(width, height)
    return math.ceil(w * h / 750)


# Media made with Pillow and pypdf.


def picture(size: tuple[int, int], fmt: str = "PNG", mode: str = "L", **options: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 200).save(out, fmt, **options)
    return out.getvalue()


def pillow_pdf(pages: int, size: tuple[int, int] = (200, 100), **options: Any) -> bytes:
    images = [Image.new("L", size, 40 * i % 255) for i in range(pages)]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], **options)
    return out.getvalue()


def pypdf_pdf(texts: list[str]) -> bytes:
    """Letter pages, each showing one text with Tj, content streams Flate-compressed."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    for text in texts:
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
        fonts = DictionaryObject({NameObject("/F1"): writer._add_object(font)})
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
        page.compress_content_streams()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def object_stream_pdf(texts: list[str], box: str | None = "[0 0 300 200]") -> bytes:
    """A PDF whose page tree sits in a compressed object stream (as PDF 1.5 writers put
    it), the MediaBox on the parent /Pages only (or nowhere, with `box` None)."""
    n = len(texts)
    pages, contents, stream_number = range(3, 3 + n), range(3 + n, 3 + 2 * n), 3 + 2 * n
    kids = " ".join(f"{p} 0 R" for p in pages)
    inherited = f" /MediaBox {box}" if box else ""
    packed = {2: f"<< /Type /Pages /Kids [{kids}] /Count {n}{inherited} >>"}
    for page, content in zip(pages, contents, strict=True):
        packed[page] = f"<< /Type /Page /Parent 2 0 R /Contents {content} 0 R >>"
    offsets, body = [], b""
    for number, text in packed.items():
        offsets.append(f"{number} {len(body)}")
        body += text.encode() + b"\n"
    header = (" ".join(offsets) + "\n").encode()
    packed_stream = zlib.compress(header + body)
    objects = [(1, "<< /Type /Catalog /Pages 2 0 R >>", None)]
    for content, text in zip(contents, texts, strict=True):
        data = zlib.compress(f"BT /F1 12 Tf 10 10 Td ({text}) Tj ET".encode())
        objects.append((content, f"<< /Length {len(data)} /Filter /FlateDecode >>", data))
    objects.append(
        (
            stream_number,
            f"<< /Type /ObjStm /N {n + 1} /First {len(header)} /Length {len(packed_stream)} "
            "/Filter /FlateDecode >>",
            packed_stream,
        )
    )
    out = b"%PDF-1.5\n"
    for number, dictionary, stream in objects:
        out += f"{number} 0 obj\n{dictionary}".encode()
        if stream is not None:
            out += b"\nstream\n" + stream + b"\nendstream"
        out += b"\nendobj\n"
    return out + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def image(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": b64(data)},
    }


def pdf_document(data: bytes, **extra: Any) -> dict[str, Any]:
    source = {"type": "base64", "media_type": "application/pdf", "data": b64(data)}
    return {"type": "document", "source": source, **extra}


def text_document(text: str, **extra: Any) -> dict[str, Any]:
    source = {"type": "text", "media_type": "text/plain", "data": text}
    return {"type": "document", "source": source, **extra}


def raw(kind: str, source_type: str, media_type: str, data: str) -> dict[str, Any]:
    """A block with its source exactly as given (to send what the helpers above would not)."""
    source = {"type": source_type, "media_type": media_type, "data": data}
    return {"type": kind, "source": source}


def file_source(kind: str, file_id: str) -> dict[str, Any]:
    return {"type": kind, "source": {"type": "file", "file_id": file_id}}


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [QUESTION, *blocks]}]


def params(*blocks: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "max_tokens": 300, "messages": user(*blocks)}


def image_line(data: bytes, media_type: str, width: int, height: int) -> str:
    return f"[image {media_type} {width}x{height} {len(data)} bytes sha256:{sha12(data)}]"


def pdf_line(data: bytes, pages: int) -> str:
    return f"[document application/pdf {pages} pages {len(data)} bytes sha256:{sha12(data)}]"


# The emulator, its controls, and the SDK.


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_emulator(tmp_path_factory.mktemp("media"), latency=0)
    yield url
    process.terminate()
    process.wait(timeout=10)


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="x", base_url=url, max_retries=0)


def control(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def counted(url: str, *blocks: dict[str, Any], model: str = MODEL) -> int:
    return (
        client(url)
        .messages.count_tokens(model=model, messages=user(*blocks), extra_headers=BETA_HEADERS)
        .input_tokens
    )


def media_cost(url: str, *blocks: dict[str, Any], model: str = MODEL) -> int:
    """What the blocks add to a request's input tokens, by count_tokens."""
    return counted(url, *blocks, model=model) - counted(url, model=model)


def reply(url: str, *blocks: dict[str, Any], model: str = MODEL) -> anthropic.types.Message:
    api = client(url).messages
    return api.create(
        model=model, max_tokens=300, messages=user(*blocks), extra_headers=BETA_HEADERS
    )


def run_batch(url: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The ended batch's results by custom_id; its ledger lines under the key `billed`."""
    api = client(url)
    batch = api.messages.batches.create(requests=requests)
    wait_ended(api, batch.id)
    results: dict[str, Any] = {
        line.custom_id: line.result for line in api.messages.batches.results(batch.id)
    }
    rows = control(url, f"/_emulator/ledger?batch_id={batch.id}")["data"]
    return results | {"billed": {row["custom_id"]: row for row in rows}}


def upload(url: str, name: str, data: bytes, mime: str, **options: Any) -> Any:
    files = client(url).beta.files
    return files.upload(file=(name, data, mime), betas=[FILES_BETA], **options)


# Tokens and reply lines


@pytest.mark.parametrize(
    "size", [(640, 480), (3000, 2000), (1568, 1568), (100, 4000), (1, 1), (1200, 1000)]
)
def test_an_image_costs_its_scaled_area_over_750(emulator: str, size: tuple[int, int]) -> None:
    data = picture(size)
    assert media_cost(emulator, image(data)) == image_tokens(*size)
    message = reply(emulator, image(data))
    assert message.usage.input_tokens == counted(emulator, image(data))
    assert message.content[0].text == (
        "Emulated reply to: What is this?\n" + image_line(data, "image/png", *size)
    )


@pytest.mark.parametrize(
    ("fmt", "media_type", "mode", "options"),
    [
        ("JPEG", "image/jpeg", "RGB", {}),
        ("JPEG", "image/jpeg", "RGB", {"progressive": True}),
        ("GIF", "image/gif", "P", {}),
        ("WEBP", "image/webp", "RGB", {"lossless": False}),
        ("WEBP", "image/webp", "RGB", {"lossless": True}),
        ("WEBP", "image/webp", "RGBA", {"lossless": False}),  # alpha: a VP8X header
    ],
)
def test_every_format_is_measured_from_its_own_header(
    emulator: str, fmt: str, media_type: str, mode: str, options: dict[str, Any]
) -> None:
    data = picture((321, 123), fmt, mode, **options)
    text = reply(emulator, image(data, media_type)).content[0].text
    assert text.endswith("\n" + image_line(data, media_type, 321, 123))
    assert media_cost(emulator, image(data, media_type)) == image_tokens(321, 123)


def test_each_answer_names_its_own_image_and_bills_its_tokens(emulator: str) -> None:
    sizes = {"a": (10, 20), "b": (400, 300), "c": (2000, 1000)}
    pictures = {key: picture(size) for key, size in sizes.items()}
    requests = [{"custom_id": key, "params": params(image(data))} for key, data in pictures.items()]
    requests.append(
        {
            "custom_id": "plain",
            "params": {**params(), "messages": [{"role": "user", "content": "hello there"}]},
        }
    )
    results = run_batch(emulator, requests)
    for key, data in pictures.items():
        message = results[key].message
        assert message.content[0].text.splitlines()[1] == image_line(data, "image/png", *sizes[key])
        assert message.usage.input_tokens == counted(emulator, image(data))
        assert results["billed"][key]["input_tokens"] == message.usage.input_tokens
    assert results["plain"].message.content[0].text == "Emulated reply to: hello there"


def test_pdf_pages_cost_their_page_image_and_their_text(emulator: str) -> None:
    pillow = pillow_pdf(3)  # three 200 x 100 pt pages, no text
    assert media_cost(emulator, pdf_document(pillow)) == 3 * image_tokens(200, 100)
    assert reply(emulator, pdf_document(pillow)).content[0].text.endswith(pdf_line(pillow, 3))
    halved = pillow_pdf(2, resolution=144.0)  # 200 px at 144 dpi: 100 pt
    assert media_cost(emulator, pdf_document(halved)) == 2 * image_tokens(100, 50)

    texts = ["Quarterly report for the north region", "Revenue grew 12% (after costs)"]
    written = pypdf_pdf(texts)
    expected = sum(image_tokens(612, 792) + text_tokens(text) for text in texts)
    assert media_cost(emulator, pdf_document(written)) == expected
    assert reply(emulator, pdf_document(written)).content[0].text.endswith(pdf_line(written, 2))

    packed = object_stream_pdf(["first page words", "second"])
    expected = 2 * image_tokens(300, 200) + text_tokens("first page words") + text_tokens("second")
    assert media_cost(emulator, pdf_document(packed)) == expected
    boxless = object_stream_pdf(["x"], box=None)  # no MediaBox: a 1568 px square, scaled
    assert media_cost(emulator, pdf_document(boxless)) == image_tokens(1568, 1568) + 1


def test_a_text_document_costs_its_text_title_and_context(emulator: str) -> None:
    text = "The quick brown fox jumps over the lazy dog, twice."
    block = text_document(text, title="Fox facts", context="from a primer")
    expected = text_tokens(text) + text_tokens("Fox facts") + text_tokens("from a primer")
    assert media_cost(emulator, block) == expected
    data = text.encode()
    line = f"[document text/plain {len(data)} bytes sha256:{sha12(data)}]"
    assert reply(emulator, block).content[0].text.endswith("\n" + line)


def test_cache_control_on_documents_writes_then_reads_the_prompt_cache(emulator: str) -> None:
    control_block = {"cache_control": {"type": "ephemeral"}}
    long_text = "Section on widgets and their many uses. " * 400  # > 1024 tokens
    pdf = pillow_pdf(2, size=(1000, 1000))  # 2 x 1334 tokens
    for block in (text_document(long_text, **control_block), pdf_document(pdf, **control_block)):
        messages = [{"role": "user", "content": [block, QUESTION]}]
        api = client(emulator).messages
        first = api.create(model=MODEL, max_tokens=50, messages=messages).usage
        second = api.create(model=MODEL, max_tokens=50, messages=messages).usage
        assert first.cache_creation_input_tokens > 1024
        assert first.cache_read_input_tokens == 0
        assert second.cache_read_input_tokens == first.cache_creation_input_tokens
        assert second.cache_creation_input_tokens == 0
        assert second.input_tokens == first.input_tokens == text_tokens("What is this?")


def test_a_block_without_media_type_is_counted_as_before(emulator: str) -> None:
    """Requests from before media were checked keep their answers (the golden test's
    batches hold one): an opaque block of 1500 tokens, unchecked, not named."""
    legacy = {"type": "image", "source": {"type": "base64", "data": "AAAA"}}
    assert media_cost(emulator, legacy) == 1500
    assert reply(emulator, legacy).content[0].text == "Emulated reply to: What is this?"


# Refusals


def _many_images() -> list[dict[str, Any]]:
    small = image(picture((10, 10)))
    return [small] * 10 + [image(picture((2001, 2)))] + [small] * 10


REFUSED: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    (
        "media-type",
        lambda: params(image(picture((4, 4)), "image/bmp")),
        "messages.0.content.1.image.source.base64.media_type: Input should be 'image/jpeg', "
        "'image/png', 'image/gif' or 'image/webp'",
    ),
    (
        "other-image-type",
        lambda: params(image(picture((4, 4), "JPEG"), "image/png")),
        "messages.0.content.1.image.source.base64: The image was specified using the "
        "image/png media type, but the image appears to be a image/jpeg image",
    ),
    (
        "not-an-image",
        lambda: params(image(b"plain words, no picture", "image/png")),
        "messages.0.content.1.image.source.base64.data: Image does not match the provided "
        "media type image/png",
    ),
    (
        "bad-base64",
        lambda: params(raw("image", "base64", "image/png", "not base64!")),
        "messages.0.content.1.image.source.base64: invalid base64 data",
    ),
    (
        "over-5-mb",
        lambda: params(raw("image", "base64", "image/png", "A" * (5 * 1024 * 1024 + 4))),
        "messages.0.content.1.image.source.base64: image exceeds 5 MB maximum: 5242884 bytes "
        "> 5242880 bytes",
    ),
    (
        "over-8000-px",
        lambda: params(image(picture((8001, 2)))),
        "messages.0.content.1.image.source.base64.data: At least one of the image dimensions "
        "exceed max allowed size: 8000 pixels",
    ),
    (
        "many-images-over-2000-px",
        lambda: params(*_many_images()),
        "messages.0.content.11.image.source.base64.data: At least one of the image dimensions "
        "exceed max allowed size for many-image requests: 2000 pixels",
    ),
    (
        "too-much-media",
        lambda: params(*[image(picture((1, 1)))] * 101),
        "Too much media: 0 document pages + 101 images > 100",
    ),
    (
        "pages-and-images",
        lambda: params(pdf_document(pillow_pdf(60)), *[image(picture((1, 1)))] * 41),
        "Too much media: 60 document pages + 41 images > 100",
    ),
    (
        "pdf-over-100-pages",
        lambda: params(pdf_document(pillow_pdf(101, size=(4, 4)))),
        "messages.0.content.1.pdf.source.base64.data: A maximum of 100 PDF pages may be provided.",
    ),
    (
        "pdf-over-600-pages",
        lambda: params(pdf_document(pillow_pdf(601, size=(2, 2))), model=BIG_MODEL),
        "messages.0.content.1.pdf.source.base64.data: A maximum of 600 PDF pages may be provided.",
    ),
    (
        "not-a-pdf",
        lambda: params(pdf_document(b"%PDX nothing here")),
        "messages.0.content.1.pdf.source.base64.data: The PDF specified was not valid.",
    ),
    (
        "pdf-media-type",
        lambda: params(raw("document", "base64", "text/plain", b64(b"hi"))),
        "messages.0.content.1.document.source.base64.media_type: Input should be 'application/pdf'",
    ),
    (
        "text-media-type",
        lambda: params(raw("document", "text", "text/html", "<p>hi</p>")),
        "messages.0.content.1.document.source.text.media_type: Input should be 'text/plain'",
    ),
    (
        "unknown-file",
        lambda: params(file_source("image", "file_011CnotThere0000000000")),
        "File not found: file_011CnotThere0000000000",
    ),
    (
        "unknown-document-file",
        lambda: params(file_source("document", "file_nope")),
        "File not found: file_nope",
    ),
]


@pytest.mark.parametrize(("case", "make", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_media_is_a_400_from_messages_and_count_tokens(
    emulator: str, case: str, make: Callable[[], dict[str, Any]], message: str
) -> None:
    body = make()
    api = client(emulator).messages
    with pytest.raises(anthropic.BadRequestError) as created:
        api.create(**body, extra_headers=BETA_HEADERS)
    with pytest.raises(anthropic.BadRequestError) as counted_error:
        api.count_tokens(model=body["model"], messages=body["messages"], extra_headers=BETA_HEADERS)
    for caught in (created, counted_error):
        assert caught.value.body["error"] == {"type": "invalid_request_error", "message": message}


def test_bad_media_is_an_errored_line_and_nothing_billed(emulator: str) -> None:
    requests = [{"custom_id": case, "params": make()} for case, make, _ in REFUSED]
    requests.append({"custom_id": "fine", "params": params(image(picture((3, 3))))})
    results = run_batch(emulator, requests)
    for case, _, message in REFUSED:
        assert results[case].type == "errored", case
        assert results[case].error.error.type == "invalid_request_error"
        assert results[case].error.error.message == message
    assert results["fine"].type == "succeeded"
    assert list(results["billed"]) == ["fine"]


def test_the_media_limits_of_a_1m_window_are_600(emulator: str) -> None:
    many = [image(picture((1, 1)))] * 101
    assert media_cost(emulator, *many, model=BIG_MODEL) == 101 * image_tokens(1, 1)
    pages = pillow_pdf(101, size=(4, 4))
    assert media_cost(emulator, pdf_document(pages), model=BIG_MODEL) == 101 * image_tokens(4, 4)


def test_a_file_source_outside_a_batch_needs_the_files_beta(emulator: str) -> None:
    data = picture((30, 40))
    uploaded = upload(emulator, "p.png", data, "image/png")
    body = params(file_source("image", uploaded.id))
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(emulator).messages.create(**body)
    assert caught.value.body["error"]["message"] == (
        "messages.0.content.1.image.source: Input tag 'file' found using 'type' does not match "
        "any of the expected tags: 'base64', 'url'"
    )
    message = client(emulator).beta.messages.create(**body, betas=[FILES_BETA])
    assert message.content[0].text.endswith(image_line(data, "image/png", 30, 40))


# Files API


def test_files_round_trip_and_file_ids_in_a_batch(private_emulator: Any) -> None:
    url = private_emulator(latency=0)
    files = client(url).beta.files
    png, pdf = picture((64, 48)), pillow_pdf(2)
    first = upload(url, "photos/cat.png", png, "image/png", expires_in_seconds=3600)
    assert (first.type, first.filename, first.mime_type) == ("file", "cat.png", "image/png")
    assert first.size_bytes == len(png) and first.downloadable is False
    assert first.id.startswith("file_") and first.expires_at is not None
    assert (first.expires_at - first.created_at).total_seconds() == 3600
    second = upload(url, "", pdf, "application/octet-stream")  # named and typed from its bytes
    assert (second.filename, second.mime_type, second.expires_at) == (
        "unnamed.pdf",
        "application/pdf",
        None,
    )
    assert files.retrieve_metadata(first.id, betas=[FILES_BETA]) == first
    assert [f.id for f in files.list(betas=[FILES_BETA])] == [second.id, first.id]

    requests = [
        {"custom_id": "img", "params": params(file_source("image", first.id))},
        {"custom_id": "doc", "params": params(file_source("document", second.id))},
    ]
    results = run_batch(url, requests)  # no beta header on the batch: none is needed
    assert results["img"].message.content[0].text.endswith(image_line(png, "image/png", 64, 48))
    assert results["doc"].message.content[0].text.endswith(pdf_line(pdf, 2))
    assert results["doc"].message.usage.input_tokens == counted(url, pdf_document(pdf))

    assert files.delete(first.id, betas=[FILES_BETA]).model_dump() == {
        "id": first.id,
        "type": "file_deleted",
    }
    with pytest.raises(anthropic.NotFoundError) as caught:
        files.retrieve_metadata(first.id, betas=[FILES_BETA])
    assert caught.value.body["error"]["message"] == f"File not found: {first.id}"
    again = run_batch(url, requests[:1])
    assert again["img"].error.error.message == f"File not found: {first.id}"

    report = control(url, "/_emulator/files")
    assert (report["uploads"], report["deletes"], report["live"]) == (2, 1, 1)
    assert report["bytes_uploaded"] == len(png) + len(pdf)
    assert report["reads"] == 2 and report["reads_without_beta"] == 2
    assert [f["id"] for f in report["data"]] == [second.id]


def test_an_expired_file_is_gone_on_the_emulators_clock(private_emulator: Any) -> None:
    url = private_emulator(latency=0)
    files = client(url).beta.files
    brief = upload(url, "a.png", picture((5, 5)), "image/png", expires_in_seconds=3600)
    kept = upload(url, "b.png", picture((6, 6)), "image/png")
    advance_emulator_clock(url, 3601)
    with pytest.raises(anthropic.NotFoundError) as caught:
        files.retrieve_metadata(brief.id, betas=[FILES_BETA])
    assert caught.value.body["error"]["details"] == {"error_code": "file_expired"}
    with pytest.raises(anthropic.NotFoundError):
        files.delete(brief.id, betas=[FILES_BETA])
    assert [f.id for f in files.list(betas=[FILES_BETA])] == [kept.id]
    results = run_batch(url, [{"custom_id": "x", "params": params(file_source("image", brief.id))}])
    assert results["x"].error.error.message == f"File not found: {brief.id}"
    report = control(url, "/_emulator/files")
    assert (report["live"], report["expired"], report["deletes"]) == (1, 1, 0)


def test_files_survive_a_restart(tmp_path: Path) -> None:
    process, url = start_emulator(tmp_path / "state", latency=0)
    try:
        uploaded = upload(url, "t.txt", b"some notes", "text/plain")
    finally:
        process.terminate()
        process.wait(timeout=10)
    process, url = start_emulator(tmp_path / "state", latency=0)
    try:
        found = client(url).beta.files.retrieve_metadata(uploaded.id, betas=[FILES_BETA])
        assert found == uploaded and found.mime_type == "text/plain"
        assert control(url, "/_emulator/files")["uploads"] == 1
        message = reply(url, file_source("document", uploaded.id))
        line = f"[document text/plain 10 bytes sha256:{sha12(b'some notes')}]"
        assert message.content[0].text.endswith(line)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_files_routes_check_beta_expiry_ids_and_paging(private_emulator: Any) -> None:
    url = private_emulator()
    files = client(url).beta.files
    with pytest.raises(anthropic.BadRequestError) as caught:
        files.list()
    assert caught.value.body["error"]["message"] == (
        "The Files API requires the beta header 'anthropic-beta: files-api-2025-04-14'."
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        upload(url, "a.png", picture((2, 2)), "image/png", expires_in_seconds=60)
    assert caught.value.body["error"]["message"] == (
        "expires_in_seconds: Input should be greater than or equal to 3600"
    )
    with pytest.raises(anthropic.NotFoundError):
        files.retrieve_metadata("file_011Cmissing", betas=[FILES_BETA])
    made = [upload(url, f"{i}.txt", f"note {i}".encode(), "text/plain").id for i in range(5)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        files.download(made[0], betas=[FILES_BETA])  # uploads are never downloadable
    assert caught.value.body["error"]["details"] == {"error_code": "file_not_downloadable"}
    assert [f.id for f in files.list(limit=2, betas=[FILES_BETA])] == made[::-1]
    first_page = files.list(limit=2, betas=[FILES_BETA])
    assert (first_page.has_more, first_page.first_id, first_page.last_id) == (  # type: ignore[attr-defined]
        True,
        made[4],
        made[3],
    )
    assert control(url, "/_emulator/files")["uploads"] == 5


# URL sources


@pytest.fixture
def picture_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A tiny HTTP server on loopback serving two pictures, counting requests by path."""
    served = {"/a.png": picture((80, 60)), "/b.jpg": picture((70, 50), "JPEG")}
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            body = served.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def url_image(url: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "url", "url": url}}


def test_url_images_are_fetched_once_from_loopback_only(
    private_emulator: Any, picture_server: tuple[str, dict[str, int]]
) -> None:
    url = private_emulator(latency=0)
    base, hits = picture_server
    png = picture((80, 60))
    for _ in range(2):
        message = reply(url, url_image(f"{base}/a.png"))
        assert message.content[0].text.endswith(image_line(png, "image/png", 80, 60))
    assert media_cost(url, url_image(f"{base}/a.png")) == image_tokens(80, 60)
    results = run_batch(
        url,
        [
            {"custom_id": "jpg", "params": params(url_image(f"{base}/b.jpg"))},
            {"custom_id": "gone", "params": params(url_image(f"{base}/missing.png"))},
            {"custom_id": "away", "params": params(url_image("http://example.com/a.png"))},
        ],
    )
    assert "image/jpeg 70x50" in results["jpg"].message.content[0].text
    assert results["gone"].error.error.message == UNREACHABLE
    assert results["away"].error.error.message == UNREACHABLE
    assert hits == {"/a.png": 1, "/b.jpg": 1, "/missing.png": 1}
    with pytest.raises(anthropic.BadRequestError) as caught:
        reply(url, url_image("https://203.0.113.9/a.png"))
    assert caught.value.body["error"]["message"] == UNREACHABLE
    assert control(url, "/_emulator/files")["url_fetches"] == 2


# Body limits


def test_batch_and_messages_bodies_over_the_set_limits_are_413(private_emulator: Any) -> None:
    url = private_emulator("--max-batch-bytes", "20000", "--max-messages-bytes", "3000")
    api = client(url)
    line = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x" * 900}]}
    small = [{"custom_id": f"r{i}", "params": line} for i in range(10)]
    big = [{"custom_id": f"r{i}", "params": line} for i in range(30)]
    api.messages.batches.create(requests=small)
    with pytest.raises(anthropic.APIStatusError) as caught:
        api.messages.batches.create(requests=big)
    assert caught.value.status_code == 413
    assert caught.value.body["error"] == {
        "type": "request_too_large",
        "message": "Request exceeds the maximum size",
    }
    with pytest.raises(anthropic.APIStatusError) as caught:
        api.messages.create(**{**line, "messages": [{"role": "user", "content": "y" * 4000}]})
    assert caught.value.status_code == 413
    assert control(url, "/_emulator/faults", {"max_batch_bytes": 10**6})["max_batch_bytes"] == 10**6
    api.messages.batches.create(requests=big)
    assert len(list(api.messages.batches.list())) == 2


def test_the_emulators_context_windows_are_batchpipes() -> None:
    from batchpipe import models
    from batchpipe.emulator import catalog

    table = models.catalog().models
    assert {m: e.context_window for m, e in catalog.MODELS.items()} == {
        m: table[m].context_window for m in catalog.MODELS
    }
