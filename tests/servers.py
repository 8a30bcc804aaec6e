"""Local servers in tests: a free port, and waiting for a started server to answer."""

import socket
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, server, output, tries: int = 240) -> None:
    """Poll `url` every half second until it answers; fail with the tail of `output()` (the server's log)
    as soon as the `server` process has exited."""
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert server.poll() is None, output()[-3000:]
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {output()[-3000:]}")
