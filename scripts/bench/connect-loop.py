#!/usr/bin/python3
# New-connection loop for the take-over test and benchmark: every PERIOD ms a new connection to host:port sends a
# line, waits for its echo and closes, until STOPFILE appears (at most 300 s). Prints one JSON summary line: counts,
# the first errors, p50/p99 in ms and every sample as [start time (s, wall clock), ms or null for a failure].
# Usage: connect-loop.py HOST PORT STOPFILE [PERIOD_MS]
import json
import os
import socket
import sys
import time

host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
period = (float(sys.argv[4]) if len(sys.argv) > 4 else 20.0) / 1000
ok, fails, errors, samples = 0, 0, [], []
end = time.time() + 300
while time.time() < end and not os.path.exists(stop):
    t0 = time.time()
    try:
        s = socket.create_connection((host, port), timeout=3)
        try:
            s.sendall(b'ping\n')
            got = b''
            while not got.endswith(b'\n'):
                d = s.recv(64)
                if not d:
                    raise OSError('closed before the echo')
                got += d
        finally:
            s.close()
        if got != b'ping\n':
            raise OSError('wrong echo %r' % got)
        ok += 1
        samples.append([round(t0, 4), round((time.time() - t0) * 1000, 3)])
    except OSError as e:
        fails += 1
        errors.append('%.3f %s %s' % (time.time(), type(e).__name__, e))
        samples.append([round(t0, 4), None])
    time.sleep(max(0, period - (time.time() - t0)))
lat = sorted(ms for _, ms in samples if ms is not None)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
print(json.dumps({'ok': ok, 'fails': fails, 'errors': errors[:10], 'p50ms': pct(0.5), 'p99ms': pct(0.99), 'samples': samples}), flush=True)
