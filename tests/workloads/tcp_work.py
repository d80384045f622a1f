"""TCP test traffic, run inside a test network namespace (the e2e tests drop first SYNs to
one port with nftables there):

    tcp_work.py SLOW_PORT FAST_PORT CLOSED_PORT N_SLOW N_FAST N_CLOSED

listens on SLOW_PORT and FAST_PORT on 127.0.0.1; opens N_SLOW connections to SLOW_PORT at
once (each waits for its SYN to be retransmitted), then N_FAST to FAST_PORT one after
another, then N_CLOSED to CLOSED_PORT (refused: a reset). Prints the seconds each slow
connection took, then "done".
"""
import socket
import sys
import threading
import time


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def connect(port, took=None):
    c = socket.socket()
    started = time.monotonic()
    c.connect(("127.0.0.1", port))
    if took is not None:
        took.append(time.monotonic() - started)
    c.close()


def main():
    slow, fast, closed, n_slow, n_fast, n_closed = map(int, sys.argv[1:7])
    listeners = [listen(slow), listen(fast)]
    took = []
    threads = [threading.Thread(target=connect, args=(slow, took)) for _ in range(n_slow)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(n_fast):
        connect(fast)
    refused = 0
    for _ in range(n_closed):
        try:
            connect(closed)
        except ConnectionRefusedError:
            refused += 1
    print("slow", " ".join(f"{t:.3f}" for t in took))
    print("refused", refused)
    print("done", flush=True)
    for s in listeners:
        s.close()


main()
