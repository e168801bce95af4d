#!/usr/bin/python3
"""Adversarial HBONE clients for test/netns/adversarial-hbone.test.ts, against a pod's 15008. Run with /usr/bin/python3
(Debian's python3-h2 and python3-hpack). Prints one JSON line and never raises (errors go in "error").

  flood  --connect IP:PORT --idle N --stalled M [--wait S]
         N TCP connections that send nothing and M that send a TLS ClientHello and then nothing; waits up to S seconds
         for the server to close them and reports how many it closed and when (seconds after each was opened).
  bomb   --connect IP:PORT --ca --cert --key --kind hpack|big|under --authority IP:PORT [--timeout S]
         Raw HTTP/2 on mutual TLS: stream 1 carries the header bomb (hpack: one 4,000-byte header inserted in the HPACK
         table and referenced ~12,000 times in one 16 KB frame, ~49 MB decoded; big: 70 KiB of distinct headers in
         HEADERS + CONTINUATION; under: 60 KiB, inside the 64 KiB limit, CONNECT to --authority). Then stream 3, on the
         same connection, a plain CONNECT to --authority that writes "bomb-check\\n" and waits for "pong:bomb-check".
  flow   --connect IP:PORT --ca --cert --key --stall-authority IP:PORT --authority IP:PORT [--rounds R] [--streams K]
         [--graceful]
         R rounds of K CONNECT streams to an upstream that never reads, each sending until flow control stops it, then
         reset (or, with --graceful, ended in order and left); then one stream to --authority (an echo) on the same
         connection, timing how long "flow-check" takes to come back.
"""
import argparse
import json
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


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

    def __init__(self, a):
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
        self.status, self.reset, self.data, self.goaway = {}, {}, {}, None
        self.tls.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, b):
        self.tls.sendall(b)

    def pump(self, until, timeout):
        """Reads frames until until() is true or timeout seconds pass; False on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.tls.settimeout(remaining)
            try:
                d = self.tls.recv(65536)
            except socket.timeout:
                return False
            if not d:
                self.goaway = self.goaway if self.goaway is not None else -1
                return False
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
        return True

    def on_frame(self, ftype, flags, sid, p):
        if ftype == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, p))
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
            self.data[sid] = self.data.get(sid, b"") + p
            if p:
                inc = struct.pack(">I", len(p))
                self.send(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
        elif ftype == RST_STREAM:
            self.reset[sid] = int.from_bytes(p[:4], "big")
        elif ftype == GOAWAY:
            self.goaway = int.from_bytes(p[4:8], "big")

    def check_stream(self, sid, authority, text, timeout):
        """A plain CONNECT on stream sid that sends text and waits for pong:text; returns (ok, seconds)."""
        t0 = time.monotonic()
        self.send(frame(HEADERS, END_HEADERS, sid, connect_block(authority)))
        if not self.pump(lambda: sid in self.status or sid in self.reset, timeout) or self.status.get(sid) != 200:
            return False, round(time.monotonic() - t0, 3)
        self.send(frame(DATA, 0, sid, (text + "\n").encode()))
        ok = self.pump(lambda: ("pong:" + text).encode() in self.data.get(sid, b"") or sid in self.reset, timeout)
        return ok and sid not in self.reset, round(time.monotonic() - t0, 3)


def bomb(a, out):
    c = Raw(a)
    c.pump(lambda: False, 0.3)  # the server's SETTINGS (acknowledged by on_frame)
    t0 = time.monotonic()
    if a.kind == "hpack":
        block = connect_block(a.authority) + literal("x-bomb", "a" * 4000, incremental=True)
        refs = 16384 - len(block)
        block += b"\xbe" * refs  # indexed field 62: the entry just inserted
        out["decoded_bytes"] = refs * (6 + 4000)
        c.send(frame(HEADERS, END_HEADERS, 1, block))
    else:
        count = 70 if a.kind == "big" else 58
        block = connect_block(a.authority) + b"".join(literal("x-h-%03d" % i, "v" * 1000) for i in range(count))
        out["decoded_bytes"] = count * (7 + 1000 + 32)
        chunks = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        for i, ch in enumerate(chunks):
            last = i == len(chunks) - 1
            c.send(frame(HEADERS if i == 0 else CONTINUATION, END_HEADERS if last else 0, 1, ch))
    answered = c.pump(lambda: 1 in c.reset or 1 in c.status, a.timeout)
    out["answer_seconds"] = round(time.monotonic() - t0, 3)
    out["bomb_reset"] = c.reset.get(1)
    out["bomb_status"] = c.status.get(1)
    out["bomb_answered"] = answered
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
    tls.sendall(conn.data_to_send())
    st = {"status": {}, "reset": {}, "data": {}, "goaway": None}

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
            tls.sendall(conn.data_to_send())
        return True

    pump(lambda: False, 0.3)
    chunk = b"\0" * 16384
    sent_total = 0
    rounds = []
    for r in range(a.rounds):
        sids = []
        for _ in range(a.streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "CONNECT"), (":authority", a.stall_authority)])
            sids.append(sid)
        tls.sendall(conn.data_to_send())
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
            tls.sendall(conn.data_to_send())
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
        tls.sendall(conn.data_to_send())
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
    tls.sendall(conn.data_to_send())
    ok = pump(lambda: sid in st["status"] or sid in st["reset"], a.timeout) and st["status"].get(sid) == 200
    # Room for the 11 bytes: on a connection whose credit leaked, this is where it would wait forever.
    ok = ok and pump(lambda: min(conn.local_flow_control_window(sid), conn.outbound_flow_control_window) >= 11, a.timeout)
    if ok:
        conn.send_data(sid, b"flow-check\n")
        tls.sendall(conn.data_to_send())
        ok = pump(lambda: b"pong:flow-check" in st["data"].get(sid, b"") or sid in st["reset"], a.timeout)
        ok = ok and sid not in st["reset"]
    out["check_ok"] = bool(ok)
    out["check_seconds"] = round(time.monotonic() - t0, 3)
    out["check_status"] = st["status"].get(sid)
    out["goaway"] = st["goaway"]
    tls.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["flood", "bomb", "flow"])
    ap.add_argument("--connect", required=True)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--stalled", type=int, default=0)
    ap.add_argument("--wait", type=float, default=20.0)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--kind", choices=["hpack", "big", "under"], default="hpack")
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
        {"flood": flood, "bomb": bomb, "flow": flow}[a.mode](a, out)
    except Exception as e:  # noqa: BLE001 - the caller reads the error from the JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
