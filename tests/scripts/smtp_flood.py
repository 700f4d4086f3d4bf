#!/usr/bin/env python3
"""Sends messages over SMTP with Python's smtplib from several threads, one reused connection
per thread, and prints "ACK <queue id>" for every message the server acknowledged with 250.

usage: smtp_flood.py HOST PORT THREADS MESSAGES_PER_THREAD [--tls] [--msgid PREFIX]

With --msgid, every message carries the header "Message-ID: <PREFIX.THREAD.N@flood.test>" and
the line printed is "ACK <queue id> <PREFIX.THREAD.N@flood.test>", so a test can map what was
acknowledged to what a sink received.

Connection errors (the server being killed) end a thread quietly: the test only cares about
what was acknowledged before that.
"""
import smtplib
import ssl
import sys
import threading

host, port, threads, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
use_tls = "--tls" in sys.argv[5:]
msgid_prefix = None
if "--msgid" in sys.argv[5:]:
    msgid_prefix = sys.argv[sys.argv.index("--msgid") + 1]
lock = threading.Lock()


def worker(n):
    try:
        s = smtplib.SMTP(host, port, timeout=30)
        s.ehlo("flood.test")
        if use_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("flood.test")
        for i in range(per):
            msgid = f"{msgid_prefix}.{n}.{i}@flood.test" if msgid_prefix else None
            extra = f"Message-ID: <{msgid}>\r\n" if msgid else ""
            body = (f"From: t{n}@client.test\r\nTo: rcpt@example.test\r\n{extra}"
                    f"Subject: flood {n}/{i}\r\n\r\n" + ("x" * 70 + "\r\n") * 14).encode()
            code, _ = s.mail(f"t{n}@client.test")
            if code != 250:
                continue
            code, _ = s.rcpt(f"r{i}@example.test")
            if code != 250:
                s.rset()
                continue
            code, resp = s.data(body)
            if code == 250:
                qid = resp.decode().rsplit(" ", 1)[-1]
                with lock:
                    if msgid:
                        print("ACK", qid, msgid, flush=True)
                    else:
                        print("ACK", qid, flush=True)
        s.quit()
    except (OSError, smtplib.SMTPException):
        return


ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
