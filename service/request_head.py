"""The bound on a request's head: a security bound, not a tuning.

httptools keeps every byte of a request line and headers until the head is complete, with no
limit of its own, so a client sending an endless header could make the process grow without
bound. A head (request line and headers) over ``MAX_HEAD_BYTES`` is refused: the protocol
(``service.http_protocol``) answers ``431 header_too_large`` and closes the connection.

The head is measured two ways, so that it is refused whether it trickles in or comes in one
piece: the bytes received while it is incomplete (what httptools is holding, judged after each
chunk), and its parsed size (URL and headers, counted as each arrives).
"""

from __future__ import annotations

#: The largest request head accepted (nginx's default buffers allow 32 KiB of headers).
MAX_HEAD_BYTES = 64 * 1024

#: The refusal: status, error code and message.
TOO_LARGE = (
    431,
    "header_too_large",
    f"The request line and headers are over {MAX_HEAD_BYTES} bytes.",
)


class HeadTooLarge(Exception):
    """Raised from a parser callback when the parsed head passes the bound: httptools stops
    parsing and the protocol answers 431."""


class HeadSize:
    """One connection's count of its current request head."""

    __slots__ = ("parsed", "received", "too_large")

    def __init__(self) -> None:
        self.received = 0
        self.parsed = 0
        self.too_large = False

    def add_received(self, size: int) -> None:
        """``size`` more bytes arrived while the head is incomplete."""
        self.received += size

    def received_too_much(self) -> bool:
        """Whether the bytes received for an incomplete head are over the bound. (Asked after
        a chunk is parsed, so a chunk that also carries the end of the head and the start of
        the body is not held against it.)"""
        return self.received > MAX_HEAD_BYTES

    def add_parsed(self, size: int) -> None:
        """``size`` more bytes of URL or header parsed; raises ``HeadTooLarge`` past the bound."""
        self.parsed += size
        if self.parsed > MAX_HEAD_BYTES:
            self.too_large = True
            raise HeadTooLarge

    def reset(self) -> None:
        """The head is done with: the next request's counts from zero."""
        self.received = self.parsed = 0
