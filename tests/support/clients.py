"""HTTP clients that write the whole request body before they read the answer (Python's
``http.client`` and ``urllib``), for the over-limit body tests of the APIs and the gateway.

Such a client only sees the 413 if the server reads the body it does not want: a server that
answers and closes with the body unread makes the kernel reset the connection, and the client,
still writing, gets ``BrokenPipeError``/``ConnectionResetError`` instead of the answer. On loopback
that needs a body larger than the socket buffers on both ends (they autotune to a few MB) and a
connection the server closes after the answer: urllib asks for that (``Connection: close``); on a
kept-alive connection uvicorn itself reads and discards the rest of the body.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

# Larger than the loopback socket buffers of both ends together, smaller than the APIs' drain
# bound (64 MiB): without the drain the client is reset, with it the client reads the 413.
OVER_SOCKET_BUFFERS = 32 * 1024 * 1024


def over_limit_body(size: int = OVER_SOCKET_BUFFERS) -> bytes:
    """A JSON body of about ``size`` bytes (an empty batch padded with spaces)."""
    return b'{"records": [' + b" " * size + b"]}"


def post_http_client(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` with http.client on a kept-alive connection; the whole body is written first.

    Args:
        url: ``http://host:port`` of the server.
        path: the request path.
        body: the request body.

    Returns:
        The status code and the response body.
    """
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_urllib(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` with urllib (``Connection: close``); the whole body is written first.

    Args:
        url: ``http://host:port`` of the server.
        path: the request path.
        body: the request body.

    Returns:
        The status code and the response body (an HTTP error's too). A reset connection raises.
    """
    request = urllib.request.Request(
        f"{url}{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
