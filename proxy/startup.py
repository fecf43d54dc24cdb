"""Startup negotiation, sans-I/O: what the proxy answers a client before its session begins.

A client's first bytes are one of: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage, or (with
``sslnegotiation=direct``) a TLS ClientHello. :class:`Negotiation` takes those bytes and returns a
:class:`Step`: bytes to answer at once, and what the connection does next. It never sees a socket; the
server performs the step. Also here: the one rewrite the proxy ever makes, :func:`drop_scram_plus`.

The answers follow PostgreSQL's own: 'S' or 'N' to SSLRequest, 'N' to GSSENCRequest; a client over a
limit or outside ``allow_clients`` hears so only in answer to its StartupMessage (an ErrorResponse sent
earlier reaches libpq as the answer to its SSLRequest, and the reason is lost); ALPN as PostgreSQL 17
judges it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .tls import ALPN_PROTOCOL, MAX_RECORD_PAYLOAD, NO_APPLICATION_PROTOCOL_ALERT, client_hello_alpn, first_record_size
from .wire import (
    AUTH,
    AUTH_SASL,
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    MAX_STARTUP_PACKET,
    SSL_REQUEST,
    STARTUP,
    TLS_HANDSHAKE_BYTE,
    FrontendDecoder,
    Message,
    ProtocolViolation,
    parse_startup,
)

SSL_YES, SSL_NO = b"S", b"N"  # the one-byte answers to SSLRequest (and 'N' to GSSENCRequest)
_FIRST_RECORD_LIMIT = 5 + MAX_RECORD_PAYLOAD  # a larger first record is no ClientHello: OpenSSL will say so
_SCRAM_PLUS = b"SCRAM-SHA-256-PLUS"


@dataclass(frozen=True, slots=True)
class Fail:
    """End the connection with a FATAL ErrorResponse (the client still speaks the PostgreSQL protocol)."""

    message: str
    sqlstate: str = "08P01"


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection without a PostgreSQL message (the client speaks TLS and could not read one)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Handshake:
    """Start the server-side TLS handshake; ``hello`` is the first record, already read from the socket."""

    hello: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    """A CancelRequest: pass ``packet`` on to the upstream (None: this client may not), then close."""

    packet: bytes | None


@dataclass(frozen=True, slots=True)
class Start:
    """The StartupMessage: the session begins.

    ``forward`` is for the upstream: the StartupMessage and whatever the client sent after it. ``typed``
    are the messages decoded from that rest, for the tap.
    """

    params: dict[str, str]
    forward: bytes
    typed: list[Message] = field(default_factory=list)


Outcome = Fail | Close | Handshake | Cancel | Start


@dataclass(frozen=True, slots=True)
class Step:
    """``reply`` goes to the client first; then ``outcome``, or keep reading while it is None."""

    reply: bytes = b""
    outcome: Outcome | None = None


_READ_ON = Step()


class Negotiation:
    """One connection's startup, from its first byte to its StartupMessage or CancelRequest.

    ``decoder`` is the connection's FrontendDecoder: it decodes the startup packets here (in the clear,
    or inside TLS once the handshake is done) and goes on decoding typed messages once the session began.
    """

    def __init__(self, decoder: FrontendDecoder) -> None:
        self.decoder = decoder
        self.refusal: Fail | None = None  # told in answer to the StartupMessage, see the module docstring
        self.may_cancel = True  # False: a CancelRequest from this client is dropped
        self.tls = False  # the startup packets now arrive inside TLS
        self.tls_pending = False  # 'S' sent or a direct TLS hello seen, handshake not finished
        self.direct = False  # the client started TLS directly, without SSLRequest
        self._first = True  # no byte received yet: a first 0x16 means direct TLS
        self._hello: bytearray | None = None  # the first TLS record read so far (direct TLS or after 'S')
        self._raw = bytearray()  # bytes since the last startup packet consumed

    def refuse(self, refusal: Fail, *, may_cancel: bool = True) -> None:
        """The server will not serve this client; it is told once its StartupMessage arrives.

        The first refusal stands (the more specific reason comes first).
        """
        if self.refusal is None:
            self.refusal = refusal
        self.may_cancel = self.may_cancel and may_cancel

    def feed(self, data: bytes, can_tls: bool) -> Step:
        """Bytes from the client; ``can_tls``: the proxy has a certificate to offer."""
        if self._first:
            self._first = False
            if data[0] == TLS_HANDSHAKE_BYTE:
                self.direct = True
                self._hello = bytearray()
        if self._hello is not None:
            return self._client_hello(data, can_tls)
        raw = self._raw
        raw += data
        try:
            packets = self.decoder.feed(data)
        except ProtocolViolation as exc:
            return Step(outcome=Fail(str(exc)))
        consumed = 0
        reply = b""
        for kind, packet, length in packets:
            if kind == SSL_REQUEST:
                consumed += length
                if can_tls and not self.tls:
                    if len(raw) > consumed:
                        # Bytes sent before the answer would be read as if they had come through TLS: a
                        # man in the middle could inject them (CVE-2021-23214). PostgreSQL refuses too.
                        return Step(reply, Fail("received unencrypted data after SSL request"))
                    self.tls_pending = True
                    self._hello = bytearray()  # the ClientHello comes next: _client_hello judges its ALPN
                    del raw[:consumed]
                    return Step(reply + SSL_YES)
                reply += SSL_NO
            elif kind == GSSENC_REQUEST:
                consumed += length
                reply += SSL_NO
            elif kind == CANCEL_REQUEST:
                return Step(reply, Cancel(packet if self.may_cancel else None))
            elif kind == STARTUP:
                if self.refusal is not None:
                    return Step(reply, self.refusal)
                try:
                    _version, params = parse_startup(packet)
                except ProtocolViolation as exc:
                    return Step(reply, Fail(str(exc)))
                forward = bytes(raw[consumed:])
                self._raw = bytearray()
                return Step(reply, Start(params, forward, [m for m in packets if m[0] >= 0]))
        del raw[:consumed]
        return Step(reply) if reply else _READ_ON

    def _client_hello(self, data: bytes, can_tls: bool) -> Step:
        """The first TLS record: after 'S' to an SSLRequest, or as the connection's first bytes when the
        client skipped SSLRequest (sslnegotiation=direct).

        As PostgreSQL 17 does: a ClientHello offering ALPN protocols but not "postgresql" gets the
        no_application_protocol alert, on either path. For direct TLS also: without a certificate the
        connection is closed, and one without ALPN is closed once the handshake completes (see
        :meth:`tls_established`). The first record is collected whole (at most 16 KiB; the server bounds
        the wait with client_login_timeout) and handed to the TLS layer.
        """
        hello = self._hello
        assert hello is not None
        hello += data
        if not can_tls:
            self._hello = None
            return Step(outcome=Close("client started TLS directly (sslnegotiation=direct) but the proxy has "
                                      "no tls_cert"))
        self.tls_pending = True
        size = first_record_size(hello)
        if size is None or len(hello) < size <= _FIRST_RECORD_LIMIT:
            return _READ_ON  # the rest of the first record is still on its way
        self._hello = None
        offered = None
        if size <= _FIRST_RECORD_LIMIT:
            # Not a plain ClientHello (fragmented, malformed): the handshake will judge it.
            with contextlib.suppress(ValueError):
                offered = client_hello_alpn(hello[:size])
        if offered is not None and ALPN_PROTOCOL not in offered:
            how = "direct TLS (sslnegotiation=direct)" if self.direct else "TLS after SSLRequest"
            return Step(NO_APPLICATION_PROTOCOL_ALERT, Close(
                f"{how} offering ALPN {offered} without {ALPN_PROTOCOL!r}; sent the no_application_protocol alert"))
        return Step(outcome=Handshake(bytes(hello)))

    def tls_established(self, alpn: str | None) -> Close | None:
        """The handshake completed with ``alpn`` selected; startup goes on inside TLS, unless this says no."""
        self.tls_pending = False
        self._raw.clear()
        self.tls = True
        if self.direct and alpn != ALPN_PROTOCOL:
            # PostgreSQL 17: "received direct SSL connection request without ALPN protocol negotiation
            # extension", and the connection is closed.
            return Close(f"direct TLS (sslnegotiation=direct) without ALPN {ALPN_PROTOCOL!r}")
        return None


def drop_scram_plus(first: bytes) -> bytes | None:
    """Client leg plaintext, upstream leg TLS: remove SCRAM-SHA-256-PLUS from the server's offer.

    The server offers channel binding because its own connection (to the proxy) is TLS. libpq
    treats that offer on a connection it sees as unencrypted as a stripped-TLS attack and gives
    up ("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"), although
    plain SCRAM-SHA-256 (gs2 flag 'n') is accepted by the server. This first server message,
    only in this leg combination, is the one thing the proxy ever rewrites.

    ``first`` is what the server has sent so far. None: the first message is incomplete, hold it back
    and call again with more. Otherwise the bytes to pass on; everything after them is forwarded untouched.
    """
    end = 1 + int.from_bytes(first[1:5], "big") if len(first) >= 5 else 5
    if len(first) < end <= MAX_STARTUP_PACKET:  # incomplete (and not absurdly long): wait
        return None
    if first[0] != AUTH or end < 9 or int.from_bytes(first[5:9], "big") != AUTH_SASL:
        return first
    mechanisms = [m for m in first[9:end].split(b"\0") if m]
    kept = [m for m in mechanisms if m != _SCRAM_PLUS]
    if kept == mechanisms or not kept:
        return first
    body = AUTH_SASL.to_bytes(4, "big") + b"".join(m + b"\0" for m in kept) + b"\0"
    return bytes((AUTH,)) + (len(body) + 4).to_bytes(4, "big") + body + first[end:]
