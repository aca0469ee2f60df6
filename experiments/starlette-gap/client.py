"""Fixed-count keep-alive HTTP/1.1 load: N sequential GETs over C connections (round-robin, one in flight
per connection), for instruction-count profiling where a fixed request count matters more than speed."""

import socket
import sys
import time


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request(sock, raw, buf):
    sock.sendall(raw)
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = bytes(buf[:head_end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) >= 0 else None])
            total = head_end + 4 + length
            if len(buf) >= total:
                status = int(buf[9:12])
                del buf[:total]
                return status
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/json"
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    raw = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".encode()
    socks = [connect(port) for _ in range(conns)]
    bufs = [bytearray() for _ in socks]
    t = time.perf_counter()
    for n in range(count):
        k = n % conns
        status = request(socks[k], raw, bufs[k])
        if status != 200:
            raise SystemExit(f"status {status}")
    dt = time.perf_counter() - t
    print(f"{count} requests in {dt:.2f}s ({count / dt:.0f}/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
