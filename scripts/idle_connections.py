#!/usr/bin/env python3
"""Open N keep-alive connections to HOST:PORT, send one GET /plaintext on
each, read every answer, print one line, then hold them open until killed.

Usage: idle_connections.py HOST PORT N
"""
import resource
import socket
import sys
import time


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < count + 16:
        sys.exit(f"open files limit {hard} is below {count + 16}")
    request = b"GET /plaintext HTTP/1.1\r\nHost: bench\r\n\r\n"
    sockets = []
    start = time.monotonic()
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(request)
        sockets.append(s)
    for s in sockets:
        answer = b""
        while not answer.endswith(b"Hello, World!"):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("a connection closed before its answer")
            answer += chunk
    elapsed = time.monotonic() - start
    print(f"{count} connections open and answered in {elapsed:.1f} s", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
