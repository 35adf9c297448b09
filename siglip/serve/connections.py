"""The connection level of `siglip serve`: how many connections uvicorn holds and how long a client may
take to send a request's headers.

uvicorn bounds the time between requests on a kept-alive connection (`timeout_keep_alive`), the
size of a request's headers (h11: 16 KB, else 400) and, with `limit_concurrency`, the connections
(past it every request gets 503). It does not bound the time a client takes to send its headers:
one sending a byte every few seconds (slowloris) holds its connection, and one of those
`limit_concurrency` places, forever, since each byte also cancels the keep-alive timer.
`HeaderDeadline` adds that bound: a connection's request line and headers must all come within
`header_timeout` s of the connection opening, or of the previous answer on a kept-alive
connection; past it the connection is closed, with a 408 when part of a request had come. The body's deadline and the
whole request's are the app's (`limits.BodyLimit`).
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# After a 408 the connection is shut for writing and read (and dropped) for this long before it is
# closed: closing a socket with unread input sends a reset, and a client's TCP stack that gets a reset
# throws away the answer it has not read yet (the classic reason HTTP servers close lingering).
LINGER_S = 2.0

log = logging.getLogger("siglip.serve")


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers (`header_timeout` s)."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _lingering: bool = False  # a 408 was sent: what the client still sends is read and dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # the next request's headers on this kept-alive connection get a new deadline
        self._follow()

    def _waiting(self) -> bool:
        """Between requests (h11's IDLE: nothing or part of a request line and headers read), or after
        the answer while the client still sends a body nobody reads (an early 401)."""
        return self.conn.their_state is h11.IDLE or self.conn.our_state is h11.DONE

    def _follow(self) -> None:
        """Armed while the connection is `_waiting`; off while a request is in the app (whose deadlines
        then hold)."""
        if not self._waiting():
            self._disarm()
        elif self._header_timer is None and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if self.header_timeout:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting():
            return
        partial = bool(self.conn.trailing_data[0])  # part of a request came; silence is just closed (keep-alive's way)
        if self.conn.our_state is h11.IDLE and partial:  # say why we hang up
            message = f"request headers: not all received within {self.header_timeout:g} s (--header-timeout)"
            body = json.dumps({"error": {"message": message, "type": "timeout_error"}}).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            if self.transport.can_write_eof():  # a lingering close: the answer, a FIN, then LINGER_S of reading
                self._lingering = True
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)
                return
        self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderDeadline]:
    """The protocol class uvicorn gets as `http=` (uvicorn builds one per connection from its config)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": header_timeout})


def uvicorn_limits(max_connections: int, header_timeout: float, keep_alive_s: float = 5.0) -> dict:
    """uvicorn.run's keyword arguments for the connection limits. No WebSocket upgrades: no route
    uses them, so an Upgrade header is answered as plain HTTP rather than reaching a ws library."""
    return dict(
        http=protocol_with(header_timeout),
        ws="none",
        limit_concurrency=max_connections or None,
        timeout_keep_alive=keep_alive_s,
    )


def check_open_files(max_connections: int, spare: int = 64) -> None:
    """Warn when the process may open fewer files than `max_connections` needs (each is a socket)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and max_connections + spare > soft:
        log.warning(
            "--max-connections %d but this process may open only %d files (ulimit -n; hard limit %s): "
            "raise ulimit -n or lower --max-connections",
            max_connections,
            soft,
            hard,
        )
