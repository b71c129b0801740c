"""Server-side TLS upgrade of an accepted stream (``tls://`` listeners).

A ``tls://`` connection is accepted as plain TCP, counted against the agent's
limits from its first byte, and upgraded by the core (see
:meth:`execbus.agent.core.AgentCore.handle_stream`). Until then its transport
must read nothing (:class:`PausedStreamProtocol`), or the client's TLS hello
would land in the stream where ``start_tls`` cannot see it.
"""

from __future__ import annotations

import asyncio
import ssl


async def start_tls(writer: asyncio.StreamWriter, ctx: ssl.SSLContext, timeout: float) -> bool:
    """Upgrade a server-side stream to TLS; False if the connection was closed (aborted)
    during the handshake. Raises OSError (ssl.SSLError) for a failed handshake.

    ``StreamWriter.start_tls`` (3.11+) is not used: it fails with AttributeError
    when the connection is aborted during the handshake.
    """
    loop = asyncio.get_running_loop()
    transport = writer.transport
    protocol = transport.get_protocol()
    new = await loop.start_tls(
        transport, protocol, ctx, server_side=True, ssl_handshake_timeout=timeout
    )
    if new is None:  # aborted: the TLS protocol lost its transport
        return False
    # What StreamWriter.start_tls does once the handshake is done.
    writer._transport = new  # type: ignore[attr-defined]
    replace_writer = getattr(protocol, "_replace_writer", None)
    if replace_writer is not None:  # 3.11+
        replace_writer(writer)
    else:
        setattr(protocol, "_transport", new)  # noqa: B010
        setattr(protocol, "_over_ssl", True)  # noqa: B010
    return True


class PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """A stream whose transport reads nothing until TLS takes it over.

    The client's TLS hello would otherwise be read into the stream before
    ``start_tls`` (which resumes reading itself) could see it.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)
