#!/usr/bin/python3
# A threaded line-echo server for the take-over test and benchmark: every connection gets each line back until it
# closes. Usage: line-echo.py PORT
import socketserver
import sys


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


Server(('0.0.0.0', int(sys.argv[1])), Handler).serve_forever()
