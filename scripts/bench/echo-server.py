#!/usr/bin/python3
# A threaded binary echo server for the take-over tests and benchmark: every byte back as it arrives (lines too) until
# the client's FIN, then its own FIN (a half-close is echoed in full). Usage: echo-server.py PORT [ADDRESS]
# ADDRESS: 0.0.0.0 by default (IPv4 only); an IPv6 one (::) listens on IPv6 (and IPv4 where net.ipv6.bindv6only is 0).
import socket
import socketserver
import sys


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                d = self.request.recv(65536)
                if not d:
                    break
                self.request.sendall(d)
            self.request.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


class Server6(Server):
    address_family = socket.AF_INET6


host = sys.argv[2] if len(sys.argv) > 2 else '0.0.0.0'
(Server6 if ':' in host else Server)((host, int(sys.argv[1])), Handler).serve_forever()
