#!/usr/bin/env python3
"""Interoperability check of XTMP's WebSocket mapping (docs/PROTOCOL.md section 9.2) with
Python's `websockets` package, a WebSocket implementation that is not ours.

Driven by xtmp/tests/websocket_python.rs. Two modes:

relay URL
    Listens on a free loopback TCP port and prints `LISTENING <port>`. For the first TCP
    connection it opens a WebSocket to URL with the subprotocol `xtmp.v1` and relays:
    the TCP byte stream is cut into XTMP frames (96-byte header, payload_length at bytes
    24..28, big-endian) and each frame is sent as one binary message; each binary message
    received is written to the TCP connection. A Rust XTMP client connected to the port
    thus runs a whole session (handshake, requests, pushes) through `websockets`.
    Prints `RELAYED up=<frames> down=<messages>` at the end.

probe URL HANDSHAKE_HEX
    Sends the given Handshake message 1 as a binary message and reports the type of the
    binary answer, then checks the refusals: a text message (close code 1003), two frames
    in one message (1002), and a wrong path (HTTP 404). Prints one JSON object.

Works with websockets 10 (Debian 12's python3-websockets) and later versions.
"""

import asyncio
import json
import sys

import websockets

HEADER_LEN = 96
MAX_FRAME = HEADER_LEN + 16 * 1024 * 1024
SUBPROTOCOL = "xtmp.v1"
TIMEOUT = 60


def close_code(exc):
    """The close code the peer sent, from a ConnectionClosed exception."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return rcvd.code
    return getattr(exc, "code", None)


def http_status(exc):
    """The HTTP status of a refused upgrade (websockets 10: InvalidStatusCode, 14+: InvalidStatus)."""
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status


async def relay(url):
    done = asyncio.Event()
    counts = {"up": 0, "down": 0, "error": None}

    async def handle(reader, writer):
        try:
            async with websockets.connect(
                url, subprotocols=[SUBPROTOCOL], max_size=MAX_FRAME
            ) as ws:
                if ws.subprotocol != SUBPROTOCOL:
                    raise RuntimeError(f"server selected subprotocol {ws.subprotocol!r}")

                async def up():
                    while True:
                        try:
                            header = await reader.readexactly(HEADER_LEN)
                        except asyncio.IncompleteReadError as e:
                            if e.partial:
                                raise RuntimeError("TCP stream ended inside a frame header")
                            break
                        if header[:4] != b"XTMP":
                            raise RuntimeError("not an XTMP frame")
                        n = int.from_bytes(header[24:28], "big")
                        if HEADER_LEN + n > MAX_FRAME:
                            raise RuntimeError("frame too large")
                        payload = await reader.readexactly(n)
                        await ws.send(header + payload)
                        counts["up"] += 1
                    await ws.close()

                async def down():
                    async for msg in ws:
                        if isinstance(msg, str):
                            raise RuntimeError("the server sent a text message")
                        writer.write(msg)
                        await writer.drain()
                        counts["down"] += 1

                tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
                finished, pending = await asyncio.wait(
                    tasks, return_when=asyncio.FIRST_COMPLETED
                )
                for t in finished:
                    t.result()
                # One direction ended; give the other a moment to drain, then stop it.
                if pending:
                    _, still = await asyncio.wait(pending, timeout=5)
                    for t in still:
                        t.cancel()
        except Exception as e:  # reported, and the exit status says it failed
            counts["error"] = f"{type(e).__name__}: {e}"
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    server.close()
    print(f"RELAYED up={counts['up']} down={counts['down']}", flush=True)
    if counts["error"]:
        print(f"ERROR {counts['error']}", flush=True)
        return 1
    return 0


async def probe(url, handshake_hex):
    result = {}
    m1 = bytes.fromhex(handshake_hex)

    # 1. One XTMP exchange: Handshake message 1 -> HandshakeAck (or Retry).
    async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=MAX_FRAME) as ws:
        result["subprotocol"] = ws.subprotocol
        await ws.send(m1)
        reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
        result["reply_is_binary"] = isinstance(reply, bytes)
        if isinstance(reply, bytes) and len(reply) >= HEADER_LEN and reply[:4] == b"XTMP":
            result["reply_type"] = reply[5]
            result["reply_length_ok"] = int.from_bytes(reply[24:28], "big") + HEADER_LEN == len(reply)

    # 2. A text message is refused with close code 1003.
    async with websockets.connect(url, subprotocols=[SUBPROTOCOL]) as ws:
        await ws.send("hello")
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            result["text_close_code"] = None
        except websockets.exceptions.ConnectionClosed as e:
            result["text_close_code"] = close_code(e)

    # 3. Two frames in one binary message are refused with 1002.
    async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=MAX_FRAME) as ws:
        await ws.send(m1 + m1)
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            result["two_frames_close_code"] = None
        except websockets.exceptions.ConnectionClosed as e:
            result["two_frames_close_code"] = close_code(e)

    # 4. A wrong path gets HTTP 404.
    base, _, _ = url.rpartition("/")
    try:
        async with websockets.connect(base + "/not-xtmp", subprotocols=[SUBPROTOCOL]):
            result["wrong_path_status"] = 101
    except Exception as e:
        result["wrong_path_status"] = http_status(e)

    print(json.dumps(result), flush=True)
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "relay":
        return asyncio.run(relay(sys.argv[2]))
    if len(sys.argv) == 4 and sys.argv[1] == "probe":
        return asyncio.run(probe(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
