"""The API key as people set it (issue 15): `ANTHROPIC_API_KEY=$(cat key.txt)` from a file
saved on Windows ends in `\\r\\n`, which httpx refuses with the whole header, key and all,
in its error. The key is stripped, a key with whitespace inside is refused without being
shown, and any error text is scrubbed of the key before it is printed, logged or stored.

As in test_security.py, nothing of batchpipe is mocked: the CLI runs as a process against
a real emulator (or a proxy that echoes the key), and then every byte it left behind,
every Dagster record and all its output are searched for the key.
"""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import dagster as dg
import pytest

from batchpipe import api
from batchpipe.defs.failures import failing
from batchpipe.errors import ApiKeyError, BatchpipeError, api_key, scrub, scrubbed
from tests.support import batchpipe, ledger, query, start_emulator
from tests.test_security import _dagster_text, _every_byte

DAY = "2026-11-03"


def _sentinel() -> str:
    return "sk-ant-sentinel-" + uuid.uuid4().hex


def _pieces(secret: str) -> list[str]:
    """The key and the parts of it a careless message could show."""
    random = secret.removeprefix("sk-ant-sentinel-")
    return [secret, random, random[:12], random[-12:]]


def _assert_nowhere(secret: str, printed: str, project: Path, home: Path) -> str:
    """No piece of the key in the output, under the project (warehouse, BATCHPIPE_STATE,
    DAGSTER_HOME, temp files) or in Dagster's records; returns those records."""
    stored = _every_byte(project)
    records, runs = _dagster_text(home)
    assert runs >= 1
    for needle in _pieces(secret):
        assert needle not in printed, f"{needle!r} was printed"
        assert needle.encode() not in stored, f"{needle!r} was stored under {project}"
        assert needle not in records, f"{needle!r} is in Dagster's records"
    return records


@pytest.fixture
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An emulator that accepts one key only: (its URL, the key)."""
    secret = _sentinel()
    process, url = start_emulator(tmp_path_factory.mktemp("keyed"), latency=0, api_key=secret)
    yield url, secret
    process.terminate()
    process.wait(timeout=10)


# --- Stripped, refused, scrubbed: the functions ------------------------------------------


@pytest.mark.parametrize("around", ["\r\n", "\n", " ", "\t", " \r\n "])
def test_surrounding_whitespace_is_stripped(monkeypatch: pytest.MonkeyPatch, around: str) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", around + "sk-ant-abc" + around)
    assert api_key() == "sk-ant-abc"
    assert not api.using_emulator()
    monkeypatch.setenv("ANTHROPIC_API_KEY", around)  # blank: no key, the emulator
    assert api_key() is None and api.using_emulator()


@pytest.mark.parametrize(
    ("inner", "said"),
    [(" ", "a space"), ("\r", "a line break"), ("\t", "a tab"), ("\x7f", "a control character"),
     ("é", "a character that is not ASCII")],
)  # fmt: skip
def test_a_key_with_whitespace_inside_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, inner: str, said: str
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", f"sk-ant-abcdef{inner}ghijkl\r\n")
    for call in (api_key, api.using_emulator, api.client):
        with pytest.raises(ApiKeyError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"ANTHROPIC_API_KEY has {said} inside it"), message
        assert not any(part in message for part in ("sk-ant", "abc", "def", "ghi", "jkl"))


def test_scrub_replaces_the_key_as_set_stripped_or_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _sentinel()
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret + "\r\n")
    text = f"a {secret} b {secret!r} c {(secret + chr(13)).encode()!r} d {secret}\r\n"
    assert scrub(text) == (
        "a [ANTHROPIC_API_KEY] b '[ANTHROPIC_API_KEY]' c b'[ANTHROPIC_API_KEY]\\r' "
        "d [ANTHROPIC_API_KEY]"
    )
    monkeypatch.setenv("ANTHROPIC_API_KEY", "short")  # a test key: nothing to hunt
    assert scrub("a short text") == "a short text"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert scrub("unchanged") == "unchanged"


def test_an_error_leaves_a_boundary_without_the_key_in_it_or_its_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = _sentinel()
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    with pytest.raises(BatchpipeError) as caught, scrubbed():
        try:
            raise ValueError(f"Illegal header value b'Bearer {secret}'")
        except ValueError as err:
            raise RuntimeError(f"while sending with {secret}") from err
    shown = "".join(traceback.format_exception(caught.value))
    assert "RuntimeError: while sending with [ANTHROPIC_API_KEY]" in shown
    assert secret not in shown and "Illegal header" not in shown

    with pytest.raises(ApiKeyError) as refused, scrubbed():  # batchpipe's own: class kept
        _refuse_quoting(secret)
    assert refused.value.message == "no good: [ANTHROPIC_API_KEY]"
    assert secret not in "".join(traceback.format_exception(refused.value))

    with pytest.raises(KeyError) as untouched, scrubbed():  # nothing to hide: as it was
        raise KeyError("no key here")
    assert untouched.value.args == ("no key here",)


def _refuse_quoting(secret: str) -> None:
    """batchpipe's own error quoting the key, raised while handling another that does."""
    try:
        raise OSError(secret)
    except OSError:
        raise ApiKeyError(f"no good: {secret}") from None


def test_a_dagster_step_fails_with_the_message_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the Dagster edge a BatchpipeError becomes a `dg.Failure` whose description is
    its message, scrubbed, with no chain; any other error leaves as it came."""
    secret = _sentinel()
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    with pytest.raises(dg.Failure) as failed, failing():
        _refuse_quoting(secret)
    assert failed.value.description == "no good: [ANTHROPIC_API_KEY]"
    assert secret not in "".join(traceback.format_exception(failed.value))
    assert failed.value.__cause__ is None and failed.value.__suppress_context__

    with pytest.raises(KeyError) as untouched, failing():
        raise KeyError("no key here")
    assert untouched.value.args == ("no key here",)


# --- Through the CLI and Dagster, against real processes ---------------------------------


@pytest.mark.slow
def test_a_key_with_a_windows_line_ending_works_and_is_nowhere(
    demo_db: Path, keyed: tuple[str, str]
) -> None:
    """The key file's `\\r\\n` used to reach httpx, whose refusal quoting the key was
    printed and stored in Dagster's run history; now the key is stripped and the run
    succeeds against an emulator that accepts the exact key only."""
    url, secret = keyed
    home = demo_db / "dagster_home"
    (demo_db / "tmp").mkdir()
    env = {
        "ANTHROPIC_API_KEY": secret + "\r\n",
        "ANTHROPIC_BASE_URL": url,
        "DAGSTER_HOME": str(home),
        "TMPDIR": str(demo_db / "tmp"),
    }
    planned = batchpipe("plan", "product_descriptions", "--date", DAY, env=env)
    assert planned.returncode == 0, planned.stderr
    assert "(count_tokens on " in planned.stdout  # the stripped key was accepted
    ran = batchpipe("run", "product_descriptions", "--date", DAY, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "30 rows (30 succeeded" in ran.stdout
    assert len(ledger(url)) == 30  # sent once, with the stripped key
    printed = "\n".join(done.stdout + done.stderr for done in (planned, ran))
    assert "product_descriptions" in _assert_nowhere(secret, printed, demo_db, home)


@pytest.mark.slow
@pytest.mark.parametrize("inner", [" ", "\r\n", "\t"], ids=["space", "crlf", "tab"])
def test_a_key_with_whitespace_inside_is_refused_and_nothing_is_sent(
    demo_db: Path, keyed: tuple[str, str], inner: str
) -> None:
    url, right = keyed
    first, second = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    env = {
        "ANTHROPIC_API_KEY": f"sk-ant-{first}{inner}{second}\n",
        "ANTHROPIC_BASE_URL": url,
        "DAGSTER_HOME": str(demo_db / "dagster_home"),
    }
    for command in (("run", "product_descriptions", "--date", DAY), ("status",)):
        done = batchpipe(*command, env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.startswith("error: ANTHROPIC_API_KEY has a "), done.stderr
        shown = done.stdout + done.stderr
        assert "Traceback" not in shown
        assert not any(part in shown for part in ("sk-ant", first, second)), shown
    assert ledger(url) == []
    upstream = anthropic.Anthropic(api_key=right, base_url=url).messages.batches.list()
    assert list(upstream) == []  # not even a batch that failed


class _EchoingProxy(BaseHTTPRequestHandler):
    """A proxy in front of the API that refuses every call and quotes the key it got, as
    some gateways do: the text of an API error can hold the key too."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
        key = self.headers.get("x-api-key") or bearer
        body = json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "permission_error",
                    "message": f"the key {key} may not use this gateway",
                },
            }
        ).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_an_api_error_quoting_the_key_is_scrubbed_everywhere(
    demo_db: Path, echoing_proxy: str
) -> None:
    """The refusal reaches the CLI's error line, the failed batch's error column and
    Dagster's stored step failure, each with [ANTHROPIC_API_KEY] where the key was."""
    secret = _sentinel()
    home = demo_db / "dagster_home"
    (demo_db / "tmp").mkdir()
    env = {
        "ANTHROPIC_API_KEY": secret,
        "ANTHROPIC_BASE_URL": echoing_proxy,
        "DAGSTER_HOME": str(home),
        "TMPDIR": str(demo_db / "tmp"),
    }
    done = batchpipe("run", "product_descriptions", "--date", DAY, env=env)
    assert done.returncode == 1
    said = "the key [ANTHROPIC_API_KEY] may not use this gateway"
    assert f"the Batches API refused the batch (403): {said}" in done.stderr
    assert "Traceback" not in done.stderr
    assert query(demo_db, "SELECT state, error FROM batchpipe_batches") == [("failed", said)]
    records = _assert_nowhere(secret, done.stdout + done.stderr, demo_db, home)
    assert said in records  # the search looked at Dagster's stored failure
