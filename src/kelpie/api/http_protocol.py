"""uvicorn's httptools protocol with the two deadlines uvicorn lacks.

uvicorn's `timeout_keep_alive` only covers the silence after a response, and any byte
received cancels it; nothing bounds how long a request takes to arrive. A client could open
connections and send their headers a byte at a time (slowloris), or declare a body and never
send it, and hold them for ever. So:

- the request line and headers must arrive within `header_timeout_s` of the connection
  opening or of the request's first byte;
- a request body may not stall (no byte received while kelpie waits for one) for longer
  than `idle_timeout_s`.

A connection past either deadline is closed. `kelpie serve` sets both from its settings
(`configure`) in every API process before it accepts connections.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("kelpie.api.http")


class DeadlineHttpProtocol(HttpToolsProtocol):
    header_timeout_s: ClassVar[float] = 10.0
    idle_timeout_s: ClassVar[float] = 30.0

    @classmethod
    def configure(cls, header_timeout_s: float, idle_timeout_s: float) -> None:
        cls.header_timeout_s = header_timeout_s
        cls.idle_timeout_s = idle_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._receiving_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_deadline()  # a client that connects and sends nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        self._cancel_body_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._receiving_body:
            self._start_body_deadline()
        super().data_received(data)

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        if self._head_deadline is None:  # the first request's runs from the connection
            self._start_head_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        self._receiving_body = True
        self._start_body_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._receiving_body = False
        self._cancel_body_deadline()
        super().on_message_complete()

    # -- deadlines --------------------------------------------------------------------------

    def _start_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _start_body_deadline(self) -> None:
        self._cancel_body_deadline()
        self._body_deadline = self.loop.call_later(self.idle_timeout_s, self._body_stalled)

    def _cancel_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        log.debug(
            "closing %s: no complete request headers in %s s", self.client, self.header_timeout_s
        )
        self._close()

    def _body_stalled(self) -> None:
        self._body_deadline = None
        if self.flow.read_paused:
            # kelpie stopped reading (the app has not consumed what came so far): the silence
            # is ours, not the client's.
            self._start_body_deadline()
            return
        log.debug("closing %s: request body stalled for %s s", self.client, self.idle_timeout_s)
        self._close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
