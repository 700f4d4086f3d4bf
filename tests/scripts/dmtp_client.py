#!/usr/bin/env python3
"""A DMTP client written from DIME.md section 10, independent of dimegate's own client.

usage: dmtp_client.py HOST PORT TLS(1.2|1.3|dual1.2|dual1.3) SERVER_NAME COMMAND...
TLS dualX: dual mode (section 10.1) on an SMTP port: the SMTP greeting must carry the token DMTPv1;
then STARTTLS <SERVER_NAME> MODE=DMTPv1, 2xx, TLS X, and "2xx OK DMTPv1" instead of a banner.
COMMAND is one of
  sgnt NAME            -> prints the base64 signet of SGNT's reply
  vrfy NAME FP         -> prints the VRFY reply line
  hist NAME            -> prints one base64 signet per line
  send ORIGIN ORIGIN_FP DEST DEST_FP FILE   -> prints the final reply line
  banner               -> prints the banner and the negotiated TLS version and cipher
The certificate is not checked here (the test checks the server, not its certificate).
Exit 0 when every reply is of the class the spec expects, 1 otherwise (the reply is printed)."""
import socket, ssl, sys


def reply(f):
    lines = []
    while True:
        line = f.readline(4096)
        if not line.endswith(b"\r\n"):
            raise SystemExit("bad reply line: %r" % line)
        lines.append(line[:-2].decode())
        if len(line) < 4 or line[3:4] != b"-":
            return int(lines[-1][:3]), lines


def expect(f, cls, what):
    code, lines = reply(f)
    if code // 100 != cls:
        print("%s: %s" % (what, " | ".join(lines)))
        sys.exit(1)
    return code, lines


def main():
    host, port, version, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cmd = sys.argv[5:]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    dual = version.startswith("dual")
    version = version[len("dual"):] if dual else version
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection((host, port), timeout=20)
    if dual:
        # Byte by byte up to each LF, so that no TLS byte is read into a plaintext buffer.
        def plain_reply():
            lines = []
            while True:
                line = b""
                while not line.endswith(b"\n"):
                    c = raw.recv(1)
                    if not c:
                        raise SystemExit("closed during the SMTP part")
                    line += c
                lines.append(line.decode().rstrip("\r\n"))
                if line[3:4] != b"-":
                    return int(lines[-1][:3]), lines
        code, greeting = plain_reply()
        if code != 220 or "DMTPv1" not in greeting[-1].split()[1:]:
            print("SMTP greeting without DMTPv1: %s" % greeting)
            sys.exit(1)
        raw.sendall(("STARTTLS <%s> MODE=DMTPv1\r\n" % name).encode())
        code, lines = plain_reply()
        if code // 100 != 2:
            print("STARTTLS: %s" % " | ".join(lines))
            sys.exit(1)
    s = ctx.wrap_socket(raw, server_hostname=name)
    f = s.makefile("rb")
    code, banner = expect(f, 2, "banner")
    if dual:
        words = banner[-1][4:].split()
        if words[:1] != ["OK"] or words[1:2] != ["DMTPv1"]:
            print("dual mode without OK DMTPv1: %s" % banner)
            sys.exit(1)
    elif code != 220 or "DMTPv1" not in banner[-1].split()[1:]:
        print("banner without DMTPv1: %s" % banner)
        sys.exit(1)

    def send(line):
        s.sendall(line.encode() + b"\r\n")

    if cmd[0] == "banner":
        print(banner[-1])
        print(s.version(), s.cipher()[0])
    elif cmd[0] == "sgnt":
        send("SGNT <%s>" % cmd[1])
        _, lines = expect(f, 2, "SGNT")
        print(lines[-1].split("[", 1)[1].rstrip("]"))
    elif cmd[0] == "vrfy":
        send("VRFY <%s> [%s]" % (cmd[1], cmd[2]))
        _, lines = expect(f, 2, "VRFY")
        print(lines[-1])
    elif cmd[0] == "hist":
        send("HIST <%s>" % cmd[1])
        _, lines = expect(f, 2, "HIST")
        for l in lines[:-1]:
            print(l[4:].strip("[]"))
    elif cmd[0] == "send":
        origin, ofp, dest, dfp, path = cmd[1:6]
        body = open(path, "rb").read()
        send("EHLO %s" % origin)
        expect(f, 2, "EHLO")
        send("MAIL FROM: <%s> [%s] SIZE=%d" % (origin, ofp, len(body)))
        expect(f, 2, "MAIL")
        send("RCPT TO: <%s> [%s]" % (dest, dfp))
        expect(f, 2, "RCPT")
        send("DATA")
        expect(f, 3, "DATA")
        s.sendall(body + b"\r\n")
        _, lines = expect(f, 2, "message")
        print(lines[-1])
    send("QUIT")
    expect(f, 2, "QUIT")


main()
