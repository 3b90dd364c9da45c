"""URL media sources, fetched once per URL, and only from this machine.

The real API downloads `{"type": "url"}` images and PDFs itself. The emulator does the
same so a pipeline's URL requests are counted and checked like inline ones, but it runs
offline and next to tests: it fetches only from loopback hosts, and anything else is the
error the real API gives for a URL it cannot download. Each URL's bytes are kept in
memory after the first fetch (a batch of thousands of requests naming one picture costs
one download); `fetches` counts the downloads made, for `GET /_emulator/files`.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.parse
import urllib.request

from batchpipe.emulator.wire import invalid

# research §3 (a live errored line for an image URL it could not fetch)
UNREACHABLE = "Unable to download the file. Please verify the URL and try again."
TIMEOUT_SECONDS = 10.0
MAX_BYTES = 32 * 1024 * 1024  # the most a request body could carry inline instead
MAX_CACHED = 256 * 1024 * 1024  # bytes kept; past it the cache starts over


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LoopbackRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another loopback URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not is_loopback_host(urllib.parse.urlsplit(newurl).hostname):
            raise urllib.error.URLError("redirect away from loopback")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No proxies (an HTTP_PROXY in the environment must not see loopback requests).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackRedirects())


class UrlFetcher:
    """URL -> bytes, fetched on first use. No lock: two threads asking for the same new
    URL at once both fetch it, which only costs a download (and counts it)."""

    def __init__(self) -> None:
        self._cache: dict[str, bytes] = {}
        self._cached_bytes = 0
        self.fetches = 0
        self.failures = 0

    def get(self, url: str) -> bytes:
        """The bytes at `url`, or the API's 400 for an unreachable URL."""
        data = self._cache.get(url)
        if data is not None:
            return data
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not is_loopback_host(parts.hostname):
            self.failures += 1
            raise invalid(UNREACHABLE)
        try:
            with _OPENER.open(url, timeout=TIMEOUT_SECONDS) as response:
                data = response.read(MAX_BYTES + 1)
        except (OSError, ValueError, urllib.error.URLError):
            self.failures += 1
            raise invalid(UNREACHABLE) from None
        self.fetches += 1
        if len(data) > MAX_BYTES:
            raise invalid(UNREACHABLE)
        if self._cached_bytes + len(data) > MAX_CACHED:
            self._cache.clear()
            self._cached_bytes = 0
        self._cache[url] = data
        self._cached_bytes += len(data)
        return data

    def reset(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
        self.fetches = self.failures = 0

    def report(self) -> dict[str, int]:
        return {"url_fetches": self.fetches, "url_failures": self.failures}
