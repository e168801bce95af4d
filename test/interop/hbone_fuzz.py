#!/usr/bin/python3
"""Seeded HTTP/2 fuzzer against a pod's HBONE port (15008), for test/netns/fuzz-hbone.test.ts. Run with /usr/bin/python3
(Debian's python3-hpack, a dependency of python3-h2). Prints one JSON line and never raises (errors go in "error").
One file of about 600 lines on purpose: the test runs it with `python3 -I` inside a pod's netns, as one script.

  --connect IP:PORT --ca --cert --key --authority IP:PORT --seed N --connections N [--workers W] [--max-seconds S]
  [--no-cert-share F] [--kinds headers,random,settings,window,priority,continuation,closed,misc]

Connection i is driven by random.Random(seed * 1_000_003 + i) alone, so any one case replays with the same seed.
Most connections complete mutual TLS with the given client certificate and then send the preface (sometimes
mangled) and a random sequence of hostile frames: random types/flags/stream ids/lengths, mutated CONNECT header
blocks, bad HPACK, SETTINGS with odd values, WINDOW_UPDATE 0 and overflow, PRIORITY loops, CONTINUATION floods,
frames on closed streams and truncated frames. The rest carry no certificate: raw bytes after the TCP connect,
mutated ClientHellos, or a TLS handshake without a client certificate. Last, one well-formed CONNECT to --authority
(an echo) on a fresh connection must come back ("final_check_ok").
"""
import argparse
import json
import random
import socket
import ssl
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = (1 << 31) - 1


def frame(ftype, flags, sid, payload=b"", length=None):
    n = len(payload) if length is None else length
    return struct.pack(">I", n & 0xFFFFFF)[1:] + bytes([ftype & 0xFF, flags & 0xFF]) + struct.pack(">I", sid & 0xFFFFFFFF) + payload


def settings_payload(pairs):
    return b"".join(struct.pack(">HI", k & 0xFFFF, v & 0xFFFFFFFF) for k, v in pairs)


class Stats:
    """Counters shared by the worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n


def mutate(rng, b):
    """A few byte-level mutations: flips, inserts, deletes, truncation, duplication."""
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[rng.randint(0, len(b)):rng.randint(0, len(b))] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 8)]
        elif op == 3 and b:
            del b[rng.randrange(len(b)):]
        elif op == 4 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 32)] * rng.randint(1, 8)
        elif op == 5 and b:
            b[rng.randrange(len(b))] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x3F, 0x40, 0xBE])
    return bytes(b)


class FrameGen:
    """Hostile frame sequences for one connection; every choice comes from rng."""

    def __init__(self, rng, authority, stats):
        import hpack  # Debian python3-hpack

        self.rng = rng
        self.authority = authority
        self.stats = stats
        self.enc = hpack.Encoder()
        self.next_sid = 1
        self.closed = []

    def sid(self):
        r = self.rng.random()
        if r < 0.55:
            s = self.next_sid
            self.next_sid += 2
            return s
        if r < 0.7 and self.closed:
            return self.rng.choice(self.closed)
        return self.rng.choice([0, 2, 4, 0x7FFFFFFF, 0xFFFFFFFF, self.rng.randrange(1 << 31), self.next_sid + 100])

    def authority_value(self):
        host, _, port = self.authority.rpartition(":")
        return self.rng.choice([
            self.authority, self.authority, f"{host}:{self.rng.choice([0, 1, 22, 15001, 15006, 15008, 15020, 65535, 65536, 99999])}",
            f"127.0.0.1:{port}", f"[::1]:{port}", "localhost:" + port, "", host, ":" + port, host + ":", "a" * self.rng.randint(1, 2000),
            f"{host}:{port}/x", f"{host}:{port}\x00", f"{host}:-1", "10.0.0.1:80", f"{host}:{port} ", "%00", "\u00e9:1",
        ])

    def header_list(self):
        rng = self.rng
        h = [(":method", rng.choice(["CONNECT"] * 6 + ["GET", "POST", "connect", "", "C" * 300])), (":authority", self.authority_value())]
        for _ in range(rng.randint(0, 6)):
            h.append(rng.choice([
                (":path", "/"), (":scheme", "https"), (":protocol", "websocket"), (":status", "200"), (":unknown", "x"),
                ("connection", "keep-alive"), ("te", "trailers"), ("te", "gzip"), ("Upper-Case", "x"), ("", "empty-name"),
                ("x-bin", "\x00\x01\x7f"), ("x-long", "v" * rng.randint(1, 8000)), ("content-length", str(rng.randint(-1, 1 << 40))),
                ("host", self.authority), ("x-forwarded-for", "1.2.3.4"), ("baggage", "k=v"), ("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"),
            ]))
        rng.shuffle(h) if rng.random() < 0.2 else None
        return h

    def header_block(self):
        """A CONNECT-like header block, HPACK-encoded; sometimes mutated or replaced by bad HPACK."""
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            self.stats.add("bad_hpack")
            return rng.choice([
                b"\xff" * rng.randint(1, 20),  # integer overflow in an index
                b"\x3f\xe1\xff\xff\xff\x0f",  # table size update beyond the limit
                b"\x80",  # index 0
                b"\xbe" * rng.randint(1, 200),  # references to an entry never inserted
                b"\x40\x7f" + b"\xff" * 8,  # a literal name length that overflows
                b"\x00\x85" + b"\xff" * 5 + b"\x01a",  # Huffman string with EOS / bad padding
                b"\x20\x3f\xe1\x1f",  # table size update after a field (after nothing here) and a huge one
                bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),
            ])
        try:
            block = self.enc.encode(self.header_list())
        except Exception:  # noqa: BLE001 - an unencodable value: fall back to a plain CONNECT
            block = self.enc.encode([(":method", "CONNECT"), (":authority", self.authority)])
        if r < 0.45:
            self.stats.add("mutated_headers")
            return mutate(rng, block)
        self.stats.add("connect_headers")
        return block

    def headers_frames(self, sid):
        rng = self.rng
        block = self.header_block()
        flags = END_HEADERS | (END_STREAM if rng.random() < 0.2 else 0)
        payload = block
        if rng.random() < 0.15:
            pad = rng.randint(0, 300)
            flags |= PADDED
            payload = bytes([pad & 0xFF]) + payload + b"\0" * rng.randint(0, 10)  # pad length may exceed the payload
        if rng.random() < 0.15:
            flags |= PRIO_FLAG
            dep = rng.choice([sid, 0, sid + 2, rng.randrange(1 << 31)]) | (0x80000000 if rng.random() < 0.5 else 0)
            payload = (payload[:1] if flags & PADDED else b"") + struct.pack(">IB", dep, rng.randrange(256)) + (payload[1:] if flags & PADDED else payload)
        if rng.random() < 0.25 and len(payload) > 4:
            # Split across CONTINUATION frames (sometimes with stray frames in between).
            cut = rng.randint(1, len(payload) - 1)
            out = [frame(HEADERS, flags & ~END_HEADERS, sid, payload[:cut])]
            if rng.random() < 0.2:
                out.append(frame(rng.choice([DATA, PING, SETTINGS, WINDOW_UPDATE]), 0, rng.choice([0, sid]), b"\0" * 8))
            out.append(frame(CONTINUATION, END_HEADERS, rng.choice([sid, sid, sid + 2]), payload[cut:]))
            return out
        return [frame(HEADERS, flags, sid, payload)]

    def continuation_flood(self, sid):
        rng = self.rng
        self.stats.add("continuation_floods")
        n = rng.choice([100, 1000, 3000])
        size = rng.choice([0, 1, 16, 1024])
        blocks = [frame(HEADERS, 0, sid, self.enc.encode([(":method", "CONNECT"), (":authority", self.authority)]))]
        filler = b"\x00\x01x\x01y" * (size // 5 + 1)
        blocks += [frame(CONTINUATION, 0, sid, filler[:size]) for _ in range(n)]
        if rng.random() < 0.5:
            blocks.append(frame(CONTINUATION, END_HEADERS, sid, b""))
        return blocks

    def odd_settings(self):
        rng = self.rng
        self.stats.add("odd_settings")
        pairs = [(rng.choice([1, 2, 3, 4, 5, 6, 8, 9, 0, 7, 0xFFFF, rng.randrange(1 << 16)]),
                  rng.choice([0, 1, 2, 16383, 16384, 16777215, 16777216, MAX_WINDOW, MAX_WINDOW + 1, 0xFFFFFFFF, rng.randrange(1 << 32)]))
                 for _ in range(rng.randint(0, 8))]
        payload = settings_payload(pairs)
        r = rng.random()
        if r < 0.15:
            return [frame(SETTINGS, 0, 0, payload + b"\0" * rng.randint(1, 5))]  # not a multiple of 6
        if r < 0.25:
            return [frame(SETTINGS, ACK, 0, payload or b"\0" * 6)]  # ACK with a payload
        if r < 0.35:
            return [frame(SETTINGS, 0, rng.randint(1, 9), payload)]  # on a stream
        if r < 0.45:
            return [frame(SETTINGS, 0, 0, payload)] * rng.randint(50, 500)  # a flood, never reading the ACKs
        return [frame(SETTINGS, 0, 0, payload)]

    def window_updates(self, sid):
        rng = self.rng
        self.stats.add("window_updates")
        target = rng.choice([0, sid])
        inc = rng.choice([0, 0, 1, MAX_WINDOW, MAX_WINDOW, 0x80000000 | 5, 0xFFFFFFFF])
        out = [frame(WINDOW_UPDATE, 0, target, struct.pack(">I", inc))]
        if rng.random() < 0.4:
            out.append(frame(WINDOW_UPDATE, 0, target, struct.pack(">I", MAX_WINDOW)))  # overflow
        if rng.random() < 0.2:
            out.append(frame(WINDOW_UPDATE, 0, target, struct.pack(">I", 1)[:rng.randint(0, 3)] or b"\0" * 8))  # bad length
        return out

    def priority_loop(self):
        rng = self.rng
        self.stats.add("priority_loops")
        a, b = self.next_sid, self.next_sid + 2
        out = [frame(PRIORITY, 0, a, struct.pack(">IB", b, 16)), frame(PRIORITY, 0, b, struct.pack(">IB", a | 0x80000000, 255)),
               frame(PRIORITY, 0, a, struct.pack(">IB", a, 0))]  # self-dependency
        if rng.random() < 0.3:
            out.append(frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 1)))
        if rng.random() < 0.3:
            out.append(frame(PRIORITY, 0, a, b"\0" * rng.choice([0, 4, 6, 100])))
        if rng.random() < 0.3:
            out += [frame(PRIORITY, 0, self.next_sid + 2 * i, struct.pack(">IB", self.next_sid + 2 * i + 2, 1)) for i in range(rng.randint(100, 2000))]
        return out

    def closed_stream(self):
        """A stream opened, reset, then used again."""
        rng = self.rng
        self.stats.add("closed_stream_frames")
        sid = self.next_sid
        self.next_sid += 2
        out = self.headers_frames(sid) + [frame(RST_STREAM, 0, sid, struct.pack(">I", rng.choice([0, 8, 0xFFFFFFFF])))]
        self.closed.append(sid)
        for _ in range(rng.randint(1, 5)):
            out.append(rng.choice([
                frame(DATA, rng.choice([0, END_STREAM]), sid, b"late"), frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 100)),
                frame(RST_STREAM, 0, sid, b"\0\0\0\x08"), frame(CONTINUATION, END_HEADERS, sid, b"\x82"),
            ] + self.headers_frames(sid)))
        return out

    def random_frame(self):
        rng = self.rng
        self.stats.add("random_frames")
        ftype = rng.choice(list(range(10)) + [10, 12, 16, rng.randrange(256)])
        flags = rng.randrange(256)
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 5, 8, 9, 13, rng.randint(0, 300)])))
        sid = self.sid()
        if rng.random() < 0.1:
            return [frame(ftype, flags, sid, payload, length=rng.choice([16385, 1 << 20, 0xFFFFFF]))[:9] + payload]  # lies about its length
        return [frame(ftype, flags, sid, payload)]

    def misc(self):
        rng = self.rng
        self.stats.add("misc_frames")
        sid = self.next_sid
        return [rng.choice([
            frame(DATA, 0, 0, b"x"),  # DATA on stream 0
            frame(DATA, END_STREAM, sid, b"idle stream"),
            frame(PING, 0, 0, b"\0" * rng.choice([0, 7, 9, 100])),  # bad PING length
            frame(PING, 0, 1, b"\0" * 8),
            frame(PING, 0, 0, b"pingping"),
            frame(GOAWAY, 0, 0, struct.pack(">II", rng.randrange(1 << 31), rng.randrange(20)) + b"debug"),
            frame(GOAWAY, 0, 3, b"\0" * 8),
            frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + b"\x82"),  # clients may not push
            frame(RST_STREAM, 0, 0, b"\0\0\0\x01"),
            frame(RST_STREAM, 0, sid, b"\0\0\0\x01"),  # on an idle stream
            frame(RST_STREAM, 0, 1, b"\0\0"),
            frame(DATA, PADDED, 1, b"\xff" + b"x"),
            frame(HEADERS, 0, 0, b"\x82"),
        ])]

    def valid(self):
        """Well-formed traffic between the hostile frames, so a connection lives long enough to reach deeper states."""
        rng = self.rng
        self.stats.add("valid_steps")
        sid = self.next_sid
        r = rng.random()
        if r < 0.4:
            self.next_sid += 2
            block = self.enc.encode([(":method", "CONNECT"), (":authority", self.authority)])
            out = [frame(HEADERS, END_HEADERS, sid, block), frame(DATA, 0, sid, b"valid-%d\n" % sid)]
            if rng.random() < 0.5:
                out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)) if rng.random() < 0.5 else frame(DATA, END_STREAM, sid, b""))
                self.closed.append(sid)
            return out
        if r < 0.6:
            return [frame(PING, 0, 0, bytes(rng.randrange(256) for _ in range(8)))]
        if r < 0.75:
            return [frame(WINDOW_UPDATE, 0, rng.choice([0] + self.closed[-2:]), struct.pack(">I", rng.randint(1, 65535)))]
        if r < 0.9:
            return [frame(SETTINGS, 0, 0, settings_payload([(rng.choice([1, 3, 4, 5, 6]), rng.choice([4096, 100, 65535, 16384, 1 << 20]))]))]
        return [frame(PRIORITY, 0, self.next_sid, struct.pack(">IB", 0, rng.randrange(256)))]

    # Hostile steps and their share of the non-valid steps (cumulative bounds).
    KINDS = [(0.25, "headers"), (0.40, "random"), (0.48, "settings"), (0.56, "window"), (0.63, "priority"), (0.68, "continuation"),
             (0.80, "closed"), (1.0, "misc")]

    def sequence(self, count, kinds=None):
        """count frames: valid steps mixed with hostile ones; `kinds` (names from KINDS) limits the hostile ones."""
        rng = self.rng
        out = []
        valid_share = rng.choice([0.0, 0.5, 0.8, 0.95])
        while len(out) < count:
            sid = self.next_sid
            r = rng.random()
            kind = next(name for bound, name in self.KINDS if r < bound)
            if rng.random() < valid_share or (kinds is not None and kind not in kinds):
                out += self.valid()
            elif kind == "headers":
                self.next_sid += 2
                out += self.headers_frames(sid)
                if rng.random() < 0.5:
                    out.append(frame(DATA, rng.choice([0, END_STREAM]), sid, b"fuzz-data\n" * rng.randint(0, 50)))
            elif kind == "random":
                out += self.random_frame()
            elif kind == "settings":
                out += self.odd_settings()
            elif kind == "window":
                out += self.window_updates(sid)
            elif kind == "priority":
                out += self.priority_loop()
            elif kind == "continuation":
                out += self.continuation_flood(sid)
                self.next_sid += 2
            elif kind == "closed":
                out += self.closed_stream()
            else:
                out += self.misc()
        return out


def tls_context(a, with_cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if with_cert:
        ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def drain(sock, seconds, stats):
    """Reads whatever the server sends for up to `seconds`; counts bytes; returns False once it has closed."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (OSError, ssl.SSLError):
            stats.add("server_closed")
            return False
        if not d:
            stats.add("server_closed")
            return False
        stats.add("bytes_received", len(d))


def send_all(sock, frames, stats, rng):
    """Writes the frames in random-sized bursts, reading between bursts so the server is not blocked on us."""
    i = 0
    while i < len(frames):
        n = rng.randint(1, 64)
        burst = b"".join(frames[i:i + n])
        try:
            sock.settimeout(5)
            sock.sendall(burst)
        except (OSError, ssl.SSLError):
            stats.add("write_failed")
            return False
        stats.add("frames_sent", len(frames[i:i + n]))
        stats.add("bytes_sent", len(burst))
        i += n
        if not drain(sock, 0.0 if rng.random() < 0.7 else 0.02, stats):
            stats.add("frames_unsent", len(frames) - i)
            return False
    return True


def finish(sock, rng, stats):
    """Ends the connection one of several ways: truncated frame, abrupt reset, half-close, or plain close."""
    r = rng.random()
    try:
        if r < 0.2:
            stats.add("truncated_frames")
            sock.settimeout(2)
            sock.sendall(rng.choice([frame(DATA, 0, 1, b"x" * 100)[:rng.randint(1, 50)], frame(HEADERS, 4, 1, b"\x82")[:rng.randint(1, 9)],
                                     frame(SETTINGS, 0, 0, b"", length=600)]))
        elif r < 0.35:
            raw = sock if not isinstance(sock, ssl.SSLSocket) else sock
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        elif r < 0.5:
            drain(sock, 0.1, stats)
    except (OSError, ssl.SSLError):
        pass
    try:
        sock.close()
    except OSError:
        pass


def client_hello(rng):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(rng.choice([["h2"], ["http/1.1"], ["h2", "x" * 200]]))
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(bio_in, bio_out, server_side=False, server_hostname=rng.choice([None, "pod.example"]))
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return bio_out.read()


def no_cert_case(a, rng, stats):
    host, port = a.connect.rsplit(":", 1)
    kind = rng.choice(["raw", "raw", "hello", "hello", "tls"])
    stats.add("no_cert_" + kind)
    s = socket.create_connection((host, int(port)), timeout=5)
    if kind == "tls":
        try:
            t = tls_context(a, False).wrap_socket(s, server_hostname=None)
            # TLS 1.3: the client finishes first; the server's refusal (an alert) comes on the first read.
            t.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, b"\x02\x07CONNECT"))
            t.settimeout(5)
            got = t.recv(65536)
            # Any HTTP/2 byte back means the server spoke to a client without a certificate.
            stats.add("no_cert_served" if got else "no_cert_refused")
        except (OSError, ssl.SSLError):
            stats.add("no_cert_refused")
        s.close()
        return
    if kind == "raw":
        payload = rng.choice([
            bytes(rng.randrange(256) for _ in range(rng.randint(0, 4096))),
            PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, b"\x82"),
            b"CONNECT " + a.authority.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\xff\xff" + b"\0" * rng.randint(0, 100),  # a record header promising more than comes
            b"\x17\x03\x03\x00\x10" + b"\0" * 16,  # application data before any handshake
            b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
            b"\x80" * rng.randint(1, 100),
        ])
    else:
        payload = mutate(rng, client_hello(rng))
        if rng.random() < 0.2:
            payload = payload * rng.randint(2, 5)
    try:
        s.sendall(payload)
        drain(s, 0.05, stats)
    except OSError:
        pass
    finish(s, rng, stats)


def cert_case(a, rng, stats):
    host, port = a.connect.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        t = tls_context(a, True).wrap_socket(s, server_hostname=None)
    except (OSError, ssl.SSLError) as e:
        stats.add("tls_failed")
        stats.add("tls_failed:" + type(e).__name__)
        s.close()
        return
    stats.add("tls_connections")
    gen = FrameGen(rng, a.authority, stats)
    r = rng.random()
    if r < 0.08:
        preface = mutate(rng, PREFACE)
        stats.add("mutated_preface")
    elif r < 0.12:
        preface = b""
    else:
        preface = PREFACE
    first = [preface + frame(SETTINGS, 0, 0, settings_payload([(4, 1 << 20)]))]
    frames = first + gen.sequence(rng.choice([5, 20, 50, 200]), a.kinds.split(",") if a.kinds else None)
    if send_all(t, frames, stats, rng):
        drain(t, 0.05, stats)
    finish(t, rng, stats)


def final_check(a, stats):
    """One clean CONNECT on a fresh connection: the server must still serve a well-behaved client."""
    import hpack

    host, port = a.connect.rsplit(":", 1)
    ctx = tls_context(a, True)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(a.ca)
    t = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=None)
    enc, dec = hpack.Encoder(), hpack.Decoder()
    t.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, enc.encode([(":method", "CONNECT"), (":authority", a.authority)])))
    buf, status, got = b"", None, b""
    deadline = time.monotonic() + 10
    sent_data = False
    while time.monotonic() < deadline and b"pong:fuzz-check" not in got:
        t.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = t.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            ln = int.from_bytes(buf[:3], "big")
            ftype, flags, sid, p = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + ln]
            buf = buf[9 + ln:]
            if ftype == SETTINGS and not flags & ACK:
                t.sendall(frame(SETTINGS, ACK, 0))
            elif ftype == HEADERS and sid == 1:
                status = dict((k if isinstance(k, str) else k.decode(), v) for k, v in dec.decode(p)).get(":status")
                if str(status) == "200" and not sent_data:
                    t.sendall(frame(DATA, 0, 1, b"fuzz-check\n"))
                    sent_data = True
            elif ftype == DATA and sid == 1:
                got += p
    t.close()
    return str(status) == "200" and b"pong:fuzz-check" in got, status


def worker(a, indices, stats, stop_at):
    for i in indices:
        if time.monotonic() > stop_at:
            stats.add("skipped_deadline")
            continue
        rng = random.Random(a.seed * 1_000_003 + i)
        try:
            if rng.random() < a.no_cert_share:
                no_cert_case(a, rng, stats)
            else:
                cert_case(a, rng, stats)
            stats.add("connections")
        except (OSError, ssl.SSLError) as e:
            stats.add("connect_failed")
            stats.add("connect_failed:" + type(e).__name__)
        except Exception as e:  # noqa: BLE001 - a bug in the fuzzer itself: count it, keep going
            stats.add("fuzzer_errors")
            stats.add("fuzzer_error:" + f"{type(e).__name__}: {e}"[:120])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--authority", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--no-cert-share", type=float, default=0.2)
    ap.add_argument("--max-seconds", type=float, default=40)
    ap.add_argument("--kinds", default="", help="only these hostile steps (comma list of FrameGen.KINDS names); default all")
    a = ap.parse_args()
    out = {"seed": a.seed, "error": None}
    stats = Stats()
    t0 = time.monotonic()
    try:
        stop_at = t0 + a.max_seconds
        threads = [threading.Thread(target=worker, args=(a, range(w, a.connections, a.workers), stats, stop_at), daemon=True) for w in range(a.workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(a.max_seconds + 30)
        out["fuzz_seconds"] = round(time.monotonic() - t0, 3)
        ok, status = final_check(a, stats)
        out["final_check_ok"], out["final_check_status"] = ok, status
    except Exception as e:  # noqa: BLE001 - the caller reads the error from the JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    out["counts"] = dict(sorted(stats.c.items()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
