#!/usr/bin/python3
"""An HBONE client built on Python's h2 (Debian python3-h2), for interop tests against ambient-node's 15008.

Opens mutual TLS (1.3 unless --tls-version says otherwise) with ALPN h2 and no SNI, checks the server's URI SAN when
--server-identity is given, then opens one CONNECT stream per --authority on that one connection. On each 200 it writes
--send and reads until --expect appears or the stream ends. Run it with /usr/bin/python3 (Debian's modules).
Prints one JSON line and never raises:
  {"status", "received", "reset", "error",         the first stream (status None: no response ever came)
   "streams": [{"authority", "status", "received", "reset"}],
   "goaway", "goaway_last_stream", "peer_uri_sans", "tls_version", "cipher", "alpn"}
"reset" is a stream's RST_STREAM error code, "goaway" the server's GOAWAY error code and "goaway_last_stream" the last
stream it says it processed; "error" says why the client
stopped early (TLS alert, connection reset, EOF before every stream finished, timeout, identity mismatch).
Usage: hbone_client.py --connect IP:PORT --authority IP:PORT [--authority ...] --ca ROOT.pem [--cert C.pem --key K.pem]
       [--server-identity spiffe://...] [--send TEXT] [--expect TEXT] [--timeout S] [--tls-version 1.2|1.3] [--alpn P]
"""
import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def uri_sans(cert):
    """URI SANs of a certificate as returned by SSLSocket.getpeercert() (a dict; empty when nothing was verified)."""
    return [v for (k, v) in (cert or {}).get("subjectAltName", ()) if k == "URI"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--authority", action="append", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--server-identity")
    ap.add_argument("--send", default="")
    ap.add_argument("--expect", default="")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--tls-version", choices=sorted(TLS_VERSIONS), default="1.3")
    ap.add_argument("--alpn", default="h2")
    a = ap.parse_args()
    streams = []
    out = {"status": None, "received": "", "reset": None, "error": None, "streams": streams,
           "goaway": None, "goaway_last_stream": None, "peer_uri_sans": [], "tls_version": None, "cipher": None, "alpn": None}
    tls = None
    try:
        deadline = time.monotonic() + a.timeout
        host, port = a.connect.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[a.tls_version]
        ctx.check_hostname = False  # HBONE identities are URI SANs (checked below), never host names
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.ca)
        ctx.set_alpn_protocols([a.alpn])
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=a.timeout)
        tls = ctx.wrap_socket(raw, server_hostname=None)  # no SNI: HBONE dials pod IPs
        out["tls_version"] = tls.version()
        out["cipher"] = (tls.cipher() or (None,))[0]
        out["alpn"] = tls.selected_alpn_protocol()
        out["peer_uri_sans"] = uri_sans(tls.getpeercert())
        if out["alpn"] != "h2":
            raise RuntimeError(f"ALPN negotiated {out['alpn']!r}, not h2")
        if a.server_identity and a.server_identity not in out["peer_uri_sans"]:
            raise RuntimeError(f"server presented {out['peer_uri_sans']}, not {a.server_identity}")

        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
        conn.initiate_connection()
        by_id = {}
        for authority in a.authority:
            sid = conn.get_next_available_stream_id()
            # Extended-CONNECT-free tunnel: only :method and :authority (RFC 9113 8.5), as ztunnel sends it.
            conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
            st = {"authority": authority, "status": None, "received": "", "reset": None, "done": False, "raw": b""}
            by_id[sid] = st
            streams.append(st)
        tls.sendall(conn.data_to_send())

        def finish(st):
            st["done"] = True

        while not all(st["done"] for st in streams):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {a.timeout}s")
            tls.settimeout(remaining)
            data = tls.recv(65536)
            if not data:
                raise ConnectionError("EOF: the server closed the connection before every stream finished")
            for ev in conn.receive_data(data):
                st = by_id.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                    st["status"] = int(dict(ev.headers)[b":status"])
                    if st["status"] != 200:
                        finish(st)
                    elif a.send:
                        conn.send_data(ev.stream_id, a.send.encode())
                    elif not a.expect:
                        finish(st)
                elif isinstance(ev, h2.events.DataReceived) and st is not None:
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    st["raw"] += ev.data
                    st["received"] = st["raw"].decode(errors="replace")
                    if a.expect and a.expect in st["received"]:
                        finish(st)
                elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                    finish(st)
                elif isinstance(ev, h2.events.StreamReset) and st is not None:
                    st["reset"] = int(ev.error_code)
                    finish(st)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out["goaway"] = int(ev.error_code)
                    out["goaway_last_stream"] = ev.last_stream_id
                    for s in streams:
                        finish(s)
            tls.sendall(conn.data_to_send())
        conn.close_connection()
        tls.sendall(conn.data_to_send())
    except Exception as e:  # noqa: BLE001 - the caller reads the error from the JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if tls is not None:
            try:
                tls.close()
            except OSError:
                pass
    for st in streams:
        del st["done"], st["raw"]
    if streams:
        out.update(status=streams[0]["status"], received=streams[0]["received"], reset=streams[0]["reset"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
