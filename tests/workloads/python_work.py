"""Python workloads for emberprof's end-to-end tests: known functions, known CPU shares.

Usage: python_work.py MODE. Prints "ready" once the measured part runs, then runs until
killed. Modes:
  split    hot_a and hot_b take 3:1 of the main thread's CPU time (by thread CPU clock)
  deep     deep() recurses 30 levels, then spins in the innermost
  pool     a two-thread pool runs work_a (Python) and work_b (sha256, GIL released), each
           on a thread named after it
  native   do_hash (hashlib.sha256 over 8 MiB) and do_json (json.dumps) in turn
  burst    hot_a takes 1 s of CPU time, then the process exits
  sleep    after "go" on stdin: nap() sleeps 50 x 20 ms, wait_recv() blocks in a socket
           recv for 50 bytes sent 20 ms apart; prints "done NAP_MS RECV_MS" (the time each
           spent in those calls) and exits
"""
import ctypes
import hashlib
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def name_thread(name):
    # The kernel's thread name (comm), which profiles carry as thread.name.
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)


def spin_until(until):
    while time.thread_time() < until:
        pass


def hot_a(seconds):
    spin_until(time.thread_time() + seconds)


def hot_b(seconds):
    spin_until(time.thread_time() + seconds)


def split():
    while True:
        hot_a(0.015)
        hot_b(0.005)


def deep(n):
    if n > 1:
        return deep(n - 1)
    x = 0
    while True:
        x += 1


def work_a():
    name_thread("pool-a")
    x = 0
    while True:
        x += 1


def work_b():
    # In C with the GIL released most of the time: its samples must not take the Python
    # stack of the thread holding the GIL.
    name_thread("pool-b")
    buf = b"y" * (1 << 20)
    while True:
        hashlib.sha256(buf).digest()


def pool():
    ex = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool")
    ex.submit(work_a)
    ex.submit(work_b)
    time.sleep(0.2)


def do_hash(buf):
    for _ in range(4):
        hashlib.sha256(buf).digest()


def do_json(obj):
    json.dumps(obj)


def native():
    buf = b"x" * (8 << 20)
    obj = {str(i): [i, str(i), {"k": i * 0.5}] for i in range(20000)}
    while True:
        do_hash(buf)
        do_json(obj)


def nap(n, ms):
    t = 0.0
    for _ in range(n):
        start = time.perf_counter()
        time.sleep(ms / 1000)
        t += time.perf_counter() - start
    return t


def wait_recv(sock, n, spent):
    t = 0.0
    for _ in range(n):
        start = time.perf_counter()
        sock.recv(1)
        t += time.perf_counter() - start
    spent.append(t)


def send_every(sock, n, ms):
    for _ in range(n):
        time.sleep(ms / 1000)
        sock.send(b"x")


def sleep():
    # Waits for "go" on stdin; then `nap` sleeps 50 x 20 ms on the main thread while
    # `wait_recv` blocks in recv on another for the 50 bytes a third thread sends every
    # 20 ms. Prints "done NAP_MS RECV_MS": the time each spent in its calls.
    a, b = socket.socketpair()
    sys.stdin.readline()
    # Blocks first, so that the profiler has met the process (announced at its first block,
    # then its interpreter read from its files: tens of ms on a busy machine) before the
    # measured part.
    for _ in range(15):
        time.sleep(0.02)
    spent = []
    t = threading.Thread(target=lambda: (name_thread("recv"), wait_recv(a, 50, spent)))
    s = threading.Thread(target=send_every, args=(b, 50, 20))
    t.start()
    s.start()
    napped = nap(50, 20)
    t.join()
    s.join()
    print("done %.3f %.3f" % (napped * 1000, spent[0] * 1000), flush=True)
    sys.exit(0)


def burst():
    # Started after the profiler; exits long before its next drain.
    hot_a(1.0)
    sys.exit(0)


MODES = {"split": split, "deep": lambda: deep(30), "pool": pool, "native": native, "sleep": sleep, "burst": burst}

if __name__ == "__main__":
    run = MODES[sys.argv[1]]
    print("ready", flush=True)
    run()
    # The pool's threads keep the process alive.
    while True:
        time.sleep(1)
