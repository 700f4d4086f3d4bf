#!/usr/bin/env python3
"""HTTPS server for MTA-STS policies (Python's http.server with ssl), for tests/tls_policy.rs.

usage: mta_sts_https.py CERT KEY POLICY_DIR LOG

Binds 127.0.0.1 on a free port and prints it on the first line of stdout. A GET of
/.well-known/mta-sts.txt with Host H answers POLICY_DIR/H as text/plain; a file whose content
starts with "REDIRECT URL" answers 301 to URL; anything else is a 404. Each request appends
"HOST PATH" to LOG, so a test can count fetches. A POST (a TLS-RPT report) is stored as
LOG.N.json and answered 201.
"""
import http.server
import os
import ssl
import sys

cert, key, policy_dir, log = sys.argv[1:5]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        with open(log, "a") as f:
            f.write(f"{host} {self.path}\n")
        path = os.path.join(policy_dir, os.path.basename(host))
        if self.path != "/.well-known/mta-sts.txt" or not host or not os.path.isfile(path):
            return self.reply(404)
        with open(path, "rb") as f:
            body = f.read()
        if body.startswith(b"REDIRECT "):
            return self.reply(301, headers=[("Location", body[9:].decode().strip())])
        self.reply(200, body, [("Content-Type", "text/plain")])

    def do_POST(self):
        # A TLS-RPT report (RFC 8460 §5.4): stored as LOG.N.json, answered 201.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with open(log, "a") as f:
            f.write(f"POST {self.path} {self.headers.get('Content-Type')}\n")
        n = 0
        while os.path.exists(f"{log}.{n}.json"):
            n += 1
        with open(f"{log}.{n}.json", "wb") as f:
            f.write(body)
        self.reply(201)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
