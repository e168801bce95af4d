#!/usr/bin/python3
# Connection-setup probe the redirection benchmark runs inside a pod namespace: times N blocking connect() calls
# (the TCP handshake alone) to host:port, closing each with RST so no TIME_WAIT piles up; prints one JSON line (µs).
import json
import socket
import struct
import sys
import time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warmup = 20
linger = struct.pack('ii', 1, 0)
samples = []
for i in range(n + warmup):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    t0 = time.perf_counter_ns()
    s.connect((host, port))
    t1 = time.perf_counter_ns()
    s.close()
    if i >= warmup:
        samples.append(round((t1 - t0) / 1000, 1))
print(json.dumps({'connect_us': samples}))
