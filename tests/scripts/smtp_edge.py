#!/usr/bin/env python3
"""SMTP edge cases from a real client (Python's smtplib), one scenario per run. Prints one line
per observation, "KEY value", for tests/smtp_ingress.rs to assert on.

usage: smtp_edge.py HOST PORT SCENARIO [ARGS...]

scenarios:
  params              BINARYMIME and NOTIFY=NEVER combinations
  excess N            N recipients in one transaction, then the excess in a second one
  requiretls          REQUIRETLS inside STARTTLS and in plaintext
  errors N            N unknown commands, then whatever the server says
  pressure            one MAIL FROM, its reply
  connect N           N connections at once; the greeting code of each
  auth USER PASSWORD  one STARTTLS + AUTH PLAIN attempt; its reply code
  dribble             enter DATA, then send a byte every 0.2 s until the server answers
"""
import smtplib
import socket
import ssl
import sys
import time

host, port, scenario, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
FROM = "alice@client.test"


def unverified():
    # The gateway's certificate is self-signed; these tests are about SMTP, not PKI.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def out(key, value):
    print(f"{key} {value}", flush=True)


def connect():
    s = smtplib.SMTP(host, port, timeout=30)
    s.ehlo("edge.test")
    return s


def message(to):
    return f"From: <{FROM}>\r\nTo: <{to}>\r\nSubject: edge\r\n\r\nhello\r\n"


if scenario == "params":
    s = connect()
    out("EHLO_BINARYMIME", s.has_extn("binarymime"))
    out("EHLO_CHUNKING", s.has_extn("chunking"))
    out("MAIL_BINARYMIME", s.mail(FROM, ["BODY=BINARYMIME"])[0])
    s.rset()
    out("MAIL", s.mail(FROM)[0])
    out("RCPT_NEVER_SUCCESS", s.rcpt("a@example.test", ["NOTIFY=NEVER,SUCCESS"])[0])
    out("RCPT_DELAY_NEVER", s.rcpt("a@example.test", ["NOTIFY=DELAY,NEVER"])[0])
    out("RCPT_NEVER", s.rcpt("a@example.test", ["NOTIFY=NEVER"])[0])
    out("NOOP", s.noop()[0])
    s.quit()

elif scenario == "excess":
    n = int(args[0])
    s = connect()
    pending = [f"u{i}@example.test" for i in range(n)]
    transaction = 0
    # As RFC 5321 4.5.3.1.10 asks of a client: send what was refused with 452 in a new
    # transaction, until every recipient is taken.
    while pending:
        transaction += 1
        code = s.mail(FROM)[0]
        out(f"MAIL{transaction}", code)
        accepted, refused = [], []
        for rcpt in pending:
            code = s.rcpt(rcpt)[0]
            (accepted if code == 250 else refused).append(rcpt)
            if code not in (250, 452):
                out("UNEXPECTED", code)
        out(f"ACCEPTED{transaction}", len(accepted))
        out(f"REFUSED452_{transaction}", len(refused))
        if not accepted:
            break
        code, reply = s.data(message(accepted[0]))
        out(f"DATA{transaction}", code)
        if code == 250:
            out("ACK", reply.decode().rsplit(" ", 1)[-1])
        pending = refused
    out("NOOP", s.noop()[0])
    s.quit()

elif scenario == "requiretls":
    s = connect()
    out("PLAIN_EHLO_REQUIRETLS", s.has_extn("requiretls"))
    out("PLAIN_MAIL_REQUIRETLS", s.mail(FROM, ["REQUIRETLS"])[0])
    s.starttls(context=unverified())
    s.ehlo("edge.test")
    out("TLS_EHLO_REQUIRETLS", s.has_extn("requiretls"))
    out("TLS_MAIL_REQUIRETLS", s.mail(FROM, ["REQUIRETLS"])[0])
    out("RCPT", s.rcpt("bob@example.test")[0])
    code, reply = s.data(message("bob@example.test"))
    out("DATA", code)
    out("ACK", reply.decode().rsplit(" ", 1)[-1])
    s.quit()

elif scenario == "errors":
    s = connect()
    for i in range(int(args[0])):
        try:
            code, text = s.docmd("FOO")
        except smtplib.SMTPServerDisconnected:
            out("DISCONNECTED", i)
            break
        out("REPLY", f"{code} {text.decode()}")
        if code == 421:
            break

elif scenario == "pressure":
    s = connect()
    out("MAIL", s.mail(FROM)[0])
    s.quit()

elif scenario == "connect":
    held = []
    for i in range(int(args[0])):
        try:
            s = smtplib.SMTP(host, port, timeout=30)
            out("GREETING", 220)
            held.append(s)
        except smtplib.SMTPConnectError as e:
            out("GREETING", f"{e.smtp_code} {e.smtp_error.decode()}")
    for s in held:
        s.quit()

elif scenario == "auth":
    user, password = args
    s = connect()
    s.starttls(context=unverified())
    s.ehlo("edge.test")
    s.user, s.password = user, password
    try:
        # One mechanism, one attempt: login() would go on to LOGIN after a failed PLAIN.
        s.auth("PLAIN", s.auth_plain)
        out("AUTH", 235)
    except smtplib.SMTPAuthenticationError as e:
        out("AUTH", f"{e.smtp_code} {e.smtp_error.decode()}")
    except smtplib.SMTPResponseException as e:
        out("AUTH", f"{e.smtp_code} {e.smtp_error.decode()}")
    s.close()

elif scenario == "dribble":
    # Raw socket after the handshake: smtplib's data() would send the whole message at once.
    sock = socket.create_connection((host, port), timeout=30)
    f = sock.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline()
            if not line:
                return "closed"
            lines.append(line.decode().rstrip())
            if line[3:4] != b"-":
                return lines[-1]

    reply()
    for cmd in ["EHLO edge.test", f"MAIL FROM:<{FROM}>", "RCPT TO:<bob@example.test>", "DATA"]:
        sock.sendall(cmd.encode() + b"\r\n")
        r = reply()
    out("IN_DATA", r.split(" ")[0])
    sock.settimeout(0.2)
    started = time.monotonic()
    answer = None
    while time.monotonic() - started < 60:
        try:
            sock.sendall(b"x")
        except OSError:
            break
        try:
            data = sock.recv(4096)
            answer = data.decode(errors="replace").strip() if data else "closed"
            break
        except socket.timeout:
            continue
        except OSError:
            answer = "reset"
            break
    out("ANSWER", answer)

else:
    sys.exit(f"unknown scenario {scenario}")
