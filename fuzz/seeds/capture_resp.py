#!/usr/bin/env python3
"""Captures real replication-stream bytes for the RESP fuzz corpus.

Starts a throwaway redis-server on a free loopback port, attaches to it as a
replica (PSYNC ? -1), runs a few write sessions with redis-cli, and writes
what the master sent after each session to fuzz/corpus/resp/. Also saves the
full-resync preamble (+FULLRESYNC line) and the snapshot the master sent, the
latter to fuzz/corpus/rdb/.

Usage: python3 fuzz/seeds/capture_resp.py   (needs redis-server, redis-cli)
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")

SESSIONS = {
    "strings_expiry": [
        ["SET", "k", "v", "EX", "100"],
        ["SET", "n", "41"],
        ["INCR", "n"],
        ["APPEND", "k", "tail"],
        ["SETEX", "tmp", "30", "x"],
        ["PERSIST", "tmp"],
        ["DEL", "k"],
    ],
    "collections": [
        ["RPUSH", "l", "a", "b", "c"],
        ["LPOP", "l"],
        ["HSET", "h", "f1", "v1", "f2", "v2"],
        ["SADD", "s", "x", "y", "1"],
        ["ZADD", "z", "1.5", "m", "-inf", "n"],
        ["XADD", "st", "1-1", "f", "v"],
        ["XGROUP", "CREATE", "st", "g", "0"],
        ["EXPIRE", "h", "60"],
    ],
    "multi_db_script": [
        ["SELECT", "3"],
        ["SET", "d3", "\r\nbinary\xff"],
        ["EVAL", "redis.call('incr','c'); redis.call('set','d','e')", "0"],
        ["FLUSHDB"],
        ["SELECT", "0"],
        ["MSET", "a", "1", "b", "2"],
        ["COPY", "a", "a2"],
        ["RENAME", "b", "b2"],
    ],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode("latin-1") if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def recv_until_quiet(sock, quiet=0.5):
    sock.settimeout(quiet)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data
        if not chunk:
            return data
        data += chunk


def main():
    tmp = tempfile.mkdtemp()
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--repl-diskless-sync", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        cli = ["redis-cli", "-p", str(port)]
        subprocess.run(cli + ["SET", "before", "sync"], check=True, stdout=subprocess.DEVNULL)
        rep = socket.create_connection(("127.0.0.1", port))
        rep.sendall(cmd("REPLCONF", "listening-port", "1") + cmd("REPLCONF", "capa", "eof", "capa", "psync2"))
        time.sleep(0.2)
        recv_until_quiet(rep)  # +OK +OK
        rep.sendall(cmd("PSYNC", "?", "-1"))
        pre = b""
        deadline = time.time() + 10
        while time.time() < deadline:
            pre += recv_until_quiet(rep, 0.5)
            nl = pre.find(b"\r\n")
            if nl > 0 and pre.find(b"\r\n", nl + 2) > 0:
                line2 = pre.find(b"\r\n", nl + 2)
                n = int(pre[nl + 3:line2])
                if len(pre) >= line2 + 2 + n:
                    break
        nl = pre.find(b"\r\n")
        line2 = pre.find(b"\r\n", nl + 2)
        n = int(pre[nl + 3:line2])
        rdb = pre[line2 + 2:line2 + 2 + n]
        with open(os.path.join(CORPUS, "resp", "fullresync_line"), "wb") as f:
            f.write(pre[:nl + 2])
        with open(os.path.join(CORPUS, "rdb", "captured_fullsync.rdb"), "wb") as f:
            f.write(rdb)
        rest = pre[line2 + 2 + n:]
        for name, cmds in SESSIONS.items():
            db = "0"
            for c in cmds:
                if c[0] == "SELECT":  # each redis-cli call is a new connection
                    db = c[1]
                    continue
                subprocess.run(cli + ["-n", db] + c, check=True, stdout=subprocess.DEVNULL)
            data = rest + recv_until_quiet(rep, 1.5)
            rest = b""
            with open(os.path.join(CORPUS, "resp", "capture_" + name), "wb") as f:
                f.write(data)
            print(f"{name}: {len(data)} bytes", file=sys.stderr)
        rep.close()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
