"""What a request must say before anything of it is read: a Host this server answers to, and a JSON
Content-Type on a POST body.

The Host check stops DNS rebinding: a page on evil.example can have its name re-resolved to
127.0.0.1, and the browser then treats the loopback server as evil.example itself and reads its
answers. The browser still sends `Host: evil.example`, so answering only the names this server is
reached by (the loopback names, the bound address, `--public-url`'s host, `--allowed-hosts`) ends it:
421 before the body is read or a route runs.

The Content-Type rule keeps other sites' pages from posting to us without a CORS preflight: a
browser sends text/plain, form and multipart bodies across origins unasked ("simple" requests), but
asks first (and gets no CORS answer unless `--cors`) for application/json. clip-front posts its JSON
as text/plain and clip-retrieval's ClipClient with no Content-Type, so `/knn-service` and
`/metadata` also take those two; that is safe with the Host check (no other page can read the
answer) and an API key (a simple request cannot carry `Authorization`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from siglip.serve.limits import error_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
PLAIN_TEXT_ROUTES = frozenset({"/knn-service", "/metadata"})  # clip-front's text/plain, ClipClient's none


def host_name(host: str) -> str:
    """An address as a Host header names it: IPv6 in brackets, lower case (`::1` -> `[::1]`)."""
    host = host.strip().lower()
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def valid_name(name: str) -> bool:
    """A DNS name or IPv4 address (letters, digits, '-', '.'), or an IPv6 address in brackets."""
    if name.startswith("["):
        try:
            return ipaddress.ip_address(name[1:-1]).version == 6 and name.endswith("]")
        except ValueError:
            return False
    return bool(re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name))


def split_host(value: str) -> tuple[str, int | None]:
    """`name:port` / `[v6]:port` / `name` -> (name, port or None); ("", None) for a malformed value."""
    value = value.strip().lower()
    name, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return "", None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return "", None
        port = int(rest[1:]) if rest else None
    elif ":" in value:
        name, _, digits = value.rpartition(":")
        if not digits.isdigit() or ":" in name:
            return "", None
        port = int(digits)
    return name, port


class AllowedHosts:
    """The Host headers answered: each entry is a name (any port) or `name:port`; the loopback names and
    the bound address come with the server's `port` (0: any). `"*"` among `extra` answers every Host."""

    def __init__(self, bound: str = "127.0.0.1", port: int = 0, extra: Iterable[str] = (), public_url: str = ""):
        extra = [e.strip() for item in extra for e in item.split(",") if e.strip()]
        self.any = "*" in extra
        own = {*LOOPBACK_NAMES, host_name(bound)}
        self.entries: set[tuple[str, int | None]] = {(name, port or None) for name in own}
        if public_url:
            self.entries.add((host_name(urlsplit(public_url).hostname or ""), None))
        for entry in extra:
            if entry != "*":
                name, port = split_host(entry if entry.startswith("[") or entry.count(":") < 2 else f"[{entry}]")
                if not valid_name(name):
                    raise ValueError(f"--allowed-hosts {entry!r}: expected NAME, NAME:PORT, [IPv6]:PORT or *")
                self.entries.add((name, port))

    def allows(self, header: str) -> bool:
        if self.any:
            return True
        name, port = split_host(header)
        return bool(name) and any(name == n and (p is None or port in (None, p)) for n, p in self.entries)

    def __str__(self) -> str:
        return "any" if self.any else ", ".join(sorted(f"{n}:{p}" if p else n for n, p in self.entries))


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class RequestGate:
    """ASGI middleware: 421 for a Host not in `hosts`, 415 for a POST body that is not declared JSON
    (text/plain or none also pass on PLAIN_TEXT_ROUTES). Nothing of the request is read before."""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
        host = hosts[0] if hosts else ""
        if len(hosts) != 1 or not self.hosts.allows(host):
            message = (
                f"header Host: {host[:100]!r} is not a name this server answers to ({self.hosts}); "
                "start it with --allowed-hosts NAME to add one"
            )
            return await error_response(421, message, headers={"Connection": "close"})(scope, receive, send)
        if scope["method"] == "POST":
            kind = headers.get(b"content-type", b"").decode("latin-1")
            plain = scope["path"] in PLAIN_TEXT_ROUTES and kind.split(";")[0].strip().lower() in ("", "text/plain")
            if not (is_json(kind) or plain):
                message = (
                    f"header Content-Type: {kind[:100] or 'none'!r}; the body must be JSON sent as "
                    "Content-Type: application/json (curl: -H 'Content-Type: application/json')"
                )
                return await error_response(415, message, headers={"Connection": "close"})(scope, receive, send)
        await self.app(scope, receive, send)
