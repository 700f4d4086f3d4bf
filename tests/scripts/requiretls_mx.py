#!/usr/bin/env python3
"""A minimal SMTP receiver that offers STARTTLS and, once encrypted, REQUIRETLS (RFC 8689), for
tests/tls_policy.rs: no MTA packaged in Debian implements REQUIRETLS (Postfix 3.7 does not).

usage: requiretls_mx.py CERT KEY LOG

Binds 127.0.0.1 on a free port and prints it on the first line of stdout. Appends to LOG one
line per command received ("TLS" or "PLAIN", then the command), and "MESSAGE n" per message.
"""
import socket
import socketserver
import ssl
import sys

cert, key, log = sys.argv[1:4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)


def note(text):
    with open(log, "a") as f:
        f.write(text + "\n")


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        conn = self.request
        tls = False
        reader = conn.makefile("rb")

        def send(text):
            conn.sendall(text.encode() + b"\r\n")

        send("220 rtls.test ESMTP")
        while True:
            line = reader.readline(4096)
            if not line:
                return
            command = line.decode(errors="replace").rstrip("\r\n")
            note(("TLS " if tls else "PLAIN ") + command)
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                lines = ["rtls.test", "8BITMIME", "SIZE 10000000"]
                lines.append("REQUIRETLS" if tls else "STARTTLS")
                for l in lines[:-1]:
                    send("250-" + l)
                send("250 " + lines[-1])
            elif verb == "STARTTLS" and not tls:
                send("220 2.0.0 go ahead")
                conn = context.wrap_socket(conn, server_side=True)
                reader = conn.makefile("rb")
                tls = True
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                send("250 2.0.0 ok")
            elif verb == "DATA":
                send("354 go on")
                size = 0
                while True:
                    data = reader.readline(65536)
                    if not data or data == b".\r\n":
                        break
                    size += len(data)
                note(f"MESSAGE {size}")
                send("250 2.0.0 queued")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.2 not implemented")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
