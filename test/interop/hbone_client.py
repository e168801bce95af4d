#!/usr/bin/python3
"""An HBONE client built on Python's h2 (Debian python3-h2), for interop tests against ambient-node's 15008.

Opens mutual TLS 1.3 with ALPN h2 (no SNI), sends one CONNECT for --authority, and on 200 writes --send and reads
until --expect appears or the stream ends. Prints one JSON line: {"status", "received", "error"}. Never raises.
Usage: hbone_client.py --connect IP:PORT --authority IP:PORT --ca ROOT.pem [--cert C.pem --key K.pem] --send TEXT --expect TEXT
"""
import argparse
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--authority", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--send", default="")
    ap.add_argument("--expect", default="")
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    out = {"status": None, "received": "", "error": None}
    try:
        host, port = a.connect.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # HBONE identities are URI SANs, checked by the caller's expectations
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.ca)
        ctx.set_alpn_protocols(["h2"])
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        raw = socket.create_connection((host, int(port)), timeout=a.timeout)
        tls = ctx.wrap_socket(raw, server_hostname=None)  # no SNI
        if tls.selected_alpn_protocol() != "h2":
            raise RuntimeError(f"ALPN negotiated {tls.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", a.authority)])
        tls.sendall(conn.data_to_send())
        done = False
        while not done:
            data = tls.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    out["status"] = int(dict(ev.headers)[b":status"])
                    if out["status"] == 200 and a.send:
                        conn.send_data(sid, a.send.encode())
                    elif out["status"] != 200:
                        done = True
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    out["received"] += ev.data.decode(errors="replace")
                    if a.expect and a.expect in out["received"]:
                        done = True
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    done = True
            tls.sendall(conn.data_to_send())
        tls.close()
    except Exception as e:  # noqa: BLE001 - the caller reads the error from the JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
