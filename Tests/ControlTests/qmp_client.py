#!/usr/bin/env python3
"""Drives a real xenvfb binary's QMP monitor with QEMU's own Python client
(qemu.qmp) and with raw sockets the way libxl talks.

Usage: qmp_client.py SCENARIO XENVFB_BINARY
Exits 0 when every check of the scenario holds; prints what failed otherwise.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from qemu.qmp import QMPClient, ExecuteError

TIMEOUT = 20


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Xenvfb:
    """One xenvfb process, started with `args`; stderr kept for messages."""

    def __init__(self, binary, args, pass_fds=()):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([binary] + args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, pass_fds=pass_fds)

    def wait_for_socket(self, path):
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(path):
            if self.proc.poll() is not None:
                raise AssertionError(f"xenvfb exited with {self.proc.returncode} before {path} appeared:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear")
            time.sleep(0.02)

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Raw:
    """A plain socket client: what libxl does (messages ending in \\r\\n)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; unread: {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return json.loads(line)

    def reply(self):
        """The next message that is not an event."""
        while True:
            msg = self.line()
            if "event" not in msg:
                return msg

    def send(self, data):
        if isinstance(data, (dict, list)):
            data = json.dumps(data).encode() + b"\r\n"
        self.sock.sendall(data)

    def closed_by_peer(self):
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


async def client(path, name="test", retry=False):
    """A negotiated qemu.qmp client; with `retry`, until the socket accepts."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        qmp = QMPClient(name)
        try:
            await asyncio.wait_for(qmp.connect(path), TIMEOUT)
            return qmp
        except Exception:
            if not retry or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def execute(qmp, cmd, args=None):
    return await asyncio.wait_for(qmp.execute(cmd, args), TIMEOUT)


async def expect_error(qmp, cmd, args, error_class, desc_part):
    try:
        await execute(qmp, cmd, args)
    except ExecuteError as e:
        check(e.error_class == error_class, f"{cmd}: class {e.error_class}, expected {error_class}")
        desc = e.error.error.desc
        check(desc_part in desc, f"{cmd}: desc {desc!r} lacks {desc_part!r}")
        return
    raise AssertionError(f"{cmd} {args} succeeded; expected {error_class}")


# Scenarios ---------------------------------------------------------------

async def greeting(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path},server=on,wait=off"])
    try:
        dm.wait_for_socket(path)
        raw = Raw(path)
        first = raw.sock.recv(65536)
        check(first.endswith(b"\r\n"), f"greeting does not end in CRLF: {first!r}")
        g = json.loads(first)
        v = g["QMP"]["version"]
        check(v["qemu"] == {"major": 7, "minor": 2, "micro": 0}, f"version {v}")
        check(v["package"].startswith("xenvfb"), f"package {v['package']}")
        check(g["QMP"]["capabilities"] == [], f"capabilities {g['QMP']['capabilities']}")
        # Commands before negotiation are refused as QEMU refuses them.
        raw.send({"execute": "query-status", "id": 1})
        r = raw.reply()
        check(r.get("error", {}).get("class") == "CommandNotFound" and r.get("id") == 1, f"before negotiation: {r}")
        raw.send({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 2})
        r = raw.reply()
        check("error" in r and r["id"] == 2, f"oob accepted: {r}")
        raw.send({"execute": "qmp_capabilities", "id": 3})
        check(raw.reply() == {"return": {}, "id": 3}, "capabilities")
        raw.send({"execute": "qmp_capabilities", "id": 4})
        r = raw.reply()
        check(r.get("error", {}).get("class") == "CommandNotFound", f"second negotiation: {r}")
        # And qemu.qmp's own negotiation works.
        qmp = await client(path)
        check(qmp.greeting is not None and qmp.greeting._asdict()["QMP"]["version"]["qemu"]["major"] == 7,
              "qemu.qmp greeting")
        check((await execute(qmp, "query-status"))["status"] == "running", "status")
        await qmp.disconnect()
    finally:
        dm.stop()


async def queries(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "5", "--no-xenstore", "--name", "guest-a", "--sdl",
                         "--qmp", f"unix:{path}"])
    try:
        dm.wait_for_socket(path)
        qmp = await client(path)
        st = await execute(qmp, "query-status")
        check(st == {"status": "running", "singlestep": False, "running": True}, f"query-status {st}")
        ver = await execute(qmp, "query-version")
        check(ver["qemu"] == {"major": 7, "minor": 2, "micro": 0} and "xenvfb" in ver["package"], f"version {ver}")
        names = {c["name"] for c in await execute(qmp, "query-commands")}
        for n in ["qmp_capabilities", "query-status", "cont", "stop", "quit", "query-version", "query-commands",
                  "query-name", "query-chardev", "query-vnc", "change-vnc-password", "set_password",
                  "query-display-options"]:
            check(n in names, f"query-commands lacks {n}: {names}")
        check(await execute(qmp, "query-name") == {"name": "guest-a"}, "query-name")
        chardevs = await execute(qmp, "query-chardev")
        check(len(chardevs) == 1 and chardevs[0]["label"] == "compat_monitor0"
              and chardevs[0]["filename"] == f"unix:{path},server=on" and chardevs[0]["frame-opened"] is True,
              f"query-chardev {chardevs}")
        check(await execute(qmp, "query-vnc") == {"enabled": False}, "query-vnc")
        check(await execute(qmp, "query-display-options") == {"type": "sdl"}, "query-display-options")
        check(await execute(qmp, "change-vnc-password", {"password": "s3cret-pw"}) == {}, "change-vnc-password")
        check(await execute(qmp, "set_password", {"protocol": "vnc", "password": "s3cret-pw2",
                                                   "connected": "keep"}) == {}, "set_password")
        await expect_error(qmp, "set_password", {"protocol": "spice", "password": "x"}, "GenericError", "SPICE")
        # stop / cont change the state and emit STOP / RESUME.
        with qmp.listener(("STOP", "RESUME")) as events:
            check(await execute(qmp, "stop") == {}, "stop")
            st = await execute(qmp, "query-status")
            check(st["status"] == "paused" and st["running"] is False, f"after stop {st}")
            check(await execute(qmp, "cont") == {}, "cont")
            check((await execute(qmp, "query-status"))["status"] == "running", "after cont")
            e1 = await asyncio.wait_for(events.get(), TIMEOUT)
            e2 = await asyncio.wait_for(events.get(), TIMEOUT)
            check([e1["event"], e2["event"]] == ["STOP", "RESUME"], f"events {e1} {e2}")
            check("seconds" in e1["timestamp"] and "microseconds" in e1["timestamp"], f"timestamp {e1}")
        await qmp.disconnect()
        check("s3cret" not in dm.output(), "a VNC password reached the log")
    finally:
        dm.stop()


async def paused(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "2", "--no-xenstore", "-S", "-qmp", f"unix:{path},server=on,wait=off"])
    try:
        dm.wait_for_socket(path)
        qmp = await client(path)
        st = await execute(qmp, "query-status")
        check(st == {"status": "prelaunch", "singlestep": False, "running": False}, f"with -S {st}")
        await execute(qmp, "stop")
        check((await execute(qmp, "query-status"))["status"] == "prelaunch", "stop in prelaunch changes nothing")
        await execute(qmp, "cont")
        check((await execute(qmp, "query-status"))["status"] == "running", "cont from prelaunch")
        check(await execute(qmp, "query-name") == {}, "query-name without -name")
        check(await execute(qmp, "query-display-options") == {"type": "none"}, "display none")
        await qmp.disconnect()
    finally:
        dm.stop()


async def errors(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}"])
    try:
        dm.wait_for_socket(path)
        qmp = await client(path)
        await expect_error(qmp, "no-such-command", None, "CommandNotFound", "no-such-command")
        await expect_error(qmp, "query-status", {"verbose": True}, "GenericError", "'verbose' is unexpected")
        await expect_error(qmp, "change-vnc-password", {}, "GenericError", "'password' is missing")
        await expect_error(qmp, "change-vnc-password", {"password": 5}, "GenericError", "expected: string")
        await expect_error(qmp, "set_password", {"protocol": "rdp", "password": "x"}, "GenericError", "rdp")
        await qmp.disconnect()

        raw = Raw(path)
        raw.line()
        raw.send({"execute": "qmp_capabilities"})
        check(raw.reply() == {"return": {}}, "no id, no id in the reply")
        for ident in [{"a": [1, None, True]}, "str", 1.5, [], None, -7]:
            raw.send({"execute": "query-status", "id": ident})
            r = raw.reply()
            check("return" in r and "id" in r and r["id"] == ident, f"id {ident!r} not echoed: {r}")
        cases = [
            (b'{"execute": 5}\r\n', "'execute' must be a string"),
            (b'{"id": 1}\r\n', "lacks member 'execute'"),
            (b'{"execute": "query-status", "arguments": []}\r\n', "'arguments' must be an object"),
            (b'{"execute": "query-status", "bogus": 1}\r\n', "'bogus' is unexpected"),
            (b'[1, 2]\r\n', "must be a JSON object"),
            (b'"just a string"\r\n', "must be a JSON object"),
            (b'{"execute": "query-status",}\r\n', "JSON parse error"),
            (b'{"execute": "query-status", "id": 1, "id": 2}\r\n', "JSON parse error"),
            (b'{"execute": "\xff"}\r\n', "JSON parse error"),
            (b'this is not json\r\n', "JSON parse error"),
        ]
        for data, part in cases:
            raw.send(data)
            r = raw.reply()
            check(r.get("error", {}).get("class") == "GenericError" and part in r["error"]["desc"],
                  f"{data!r}: {r}")
        # Errors carry the id when there is one.
        raw.send({"execute": "nope", "id": "x"})
        check(raw.reply() == {"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"},
                              "id": "x"}, "CommandNotFound with id")
        # The connection survived all that.
        raw.send({"execute": "query-status", "id": 9})
        check(raw.reply()["id"] == 9, "still usable")
    finally:
        dm.stop()


async def two_clients(binary, tmp):
    p1 = os.path.join(tmp, "qmp-libxl-1")
    p2 = os.path.join(tmp, "qmp-libxenstat-1")
    args = ["-xen-domid", "1", "--no-xenstore", "-no-shutdown",
            "-chardev", f"socket,id=libxl-cmd,path={p1},server=on,wait=off",
            "-mon", "chardev=libxl-cmd,mode=control",
            "-chardev", f"socket,id=libxenstat-cmd,path={p2},server=on,wait=off",
            "-mon", "chardev=libxenstat-cmd,mode=control",
            "-nodefaults", "-no-user-config", "-xen-attach", "-name", "vncfb", "-vnc", "127.0.0.1:0,to=99",
            "-display", "none", "-machine", "xenpv", "-m", "256"]
    dm = Xenvfb(binary, args)
    try:
        dm.wait_for_socket(p1)
        dm.wait_for_socket(p2)
        a = await client(p1, "a")
        b = await client(p1, "b")
        c = await client(p2, "c")
        results = await asyncio.gather(*[execute(q, "query-name") for q in (a, b, c) for _ in range(5)])
        check(all(r == {"name": "vncfb"} for r in results), f"parallel replies {results}")
        chardevs = {d["label"]: d for d in await execute(c, "query-chardev")}
        check(set(chardevs) == {"libxl-cmd", "libxenstat-cmd"}, f"chardevs {chardevs}")
        check(chardevs["libxl-cmd"]["filename"] == f"unix:{p1},server=on", f"{chardevs}")
        # An event reaches every negotiated client.
        with a.listener("STOP") as ea, c.listener("STOP") as ec:
            await execute(b, "stop")
            await asyncio.wait_for(ea.get(), TIMEOUT)
            await asyncio.wait_for(ec.get(), TIMEOUT)
        await a.disconnect()
        check((await execute(b, "query-status"))["status"] == "paused", "b after a left")
        await b.disconnect()
        await c.disconnect()
        # libxl's own exchange, with one connection per step.
        for cmd in ["query-chardev", "query-vnc"]:
            raw = Raw(p1)
            raw.line()
            raw.send({"execute": "qmp_capabilities", "id": 1})
            check(raw.reply() == {"return": {}, "id": 1}, "libxl capabilities")
            raw.send({"execute": cmd, "id": 2})
            r = raw.reply()
            check(r["id"] == 2 and "return" in r, f"libxl {cmd}: {r}")
            raw.sock.close()
    finally:
        dm.stop()


async def garbage(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}"])
    try:
        dm.wait_for_socket(path)
        good = await client(path, "good")
        # Binary junk: answered with an error, connection kept.
        junk = Raw(path)
        junk.line()
        junk.send(bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"") + b"\n")
        r = junk.reply()
        check(r.get("error", {}).get("class") == "GenericError", f"junk: {r}")
        # A huge line: an error, then the connection is closed.
        huge = Raw(path)
        huge.line()
        try:
            huge.sock.sendall(b'{"execute": "' + b"x" * (4 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = huge.reply()
            check("too long" in r["error"]["desc"], f"huge line: {r}")
        except (EOFError, ConnectionResetError):
            pass  # closed before the error could be read: also acceptable
        check(huge.closed_by_peer(), "the flooding client was not disconnected")
        # A huge line of junk without any brace, too.
        flood = Raw(path)
        flood.line()
        try:
            flood.sock.sendall(b"a" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        check(flood.closed_by_peer(), "the junk flood was not disconnected")
        # The well-behaved client never noticed.
        check((await execute(good, "query-status"))["status"] == "running", "good client after floods")
        junk.send({"execute": "qmp_capabilities", "id": 1})
        check(junk.reply() == {"return": {}, "id": 1}, "junk client still served")
        await good.disconnect()
        check(dm.proc.poll() is None, "xenvfb died")
    finally:
        dm.stop()


async def quit_exits(binary, tmp):
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}"])
    try:
        dm.wait_for_socket(path)
        qmp = await client(path)
        with qmp.listener("SHUTDOWN") as events:
            check(await execute(qmp, "quit") == {}, "quit reply")
            ev = await asyncio.wait_for(events.get(), TIMEOUT)
            check(ev["data"] == {"guest": False, "reason": "host-qmp-quit"}, f"SHUTDOWN {ev}")
        try:
            await qmp.disconnect()
        except Exception:
            pass
        rc = dm.wait()
        check(rc == 0, f"exit status {rc} after quit:\n{dm.output()}")
        check(not os.path.exists(path), "the QMP socket was not removed")
    finally:
        dm.stop()


async def signals(binary, tmp):
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        path = os.path.join(tmp, f"qmp-{sig.name}.sock")
        dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}"])
        try:
            dm.wait_for_socket(path)
            qmp = await client(path)  # a connected client does not hold the process up
            await execute(qmp, "query-status")
            dm.proc.send_signal(sig)
            rc = dm.wait()
            check(rc == 0, f"exit status {rc} after {sig.name}:\n{dm.output()}")
            check(not os.path.exists(path), f"the QMP socket was not removed after {sig.name}")
            try:
                await qmp.disconnect()
            except Exception:
                pass
        finally:
            dm.stop()


async def fd_passing(binary, tmp):
    # dm_restrict: libxl binds and listens, then passes the fd and -S.
    path = os.path.join(tmp, "qmp-libxl-3")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(5)
    fd = listener.fileno()
    dm = Xenvfb(binary, ["-xen-domid", "3", "--no-xenstore", "-no-shutdown",
                         "-chardev", f"socket,id=libxl-cmd,fd={fd},server=on,wait=off", "-S",
                         "-mon", "chardev=libxl-cmd,mode=control", "-nodefaults", "-no-user-config",
                         "-xen-attach", "-name", "restricted", "-vnc", "none", "-display", "none", "-nographic",
                         "-machine", "xenpv", "-m", "128"], pass_fds=(fd,))
    listener.close()
    try:
        qmp = await client(path)
        check((await execute(qmp, "query-status"))["status"] == "prelaunch", "dm_restrict wants prelaunch")
        chardevs = await execute(qmp, "query-chardev")
        check(chardevs[0]["label"] == "libxl-cmd" and path in chardevs[0]["filename"], f"{chardevs}")
        await qmp.disconnect()
        dm.proc.send_signal(signal.SIGHUP)
        check(dm.wait() == 0, f"SIGHUP exit:\n{dm.output()}")
    finally:
        dm.stop()


async def stale_socket(binary, tmp):
    # A socket file left behind by a dead process is replaced; a regular file is not.
    path = os.path.join(tmp, "qmp.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}"])
    try:
        qmp = await client(path, retry=True)
        check((await execute(qmp, "query-status"))["running"], "served on the replaced socket")
        # A second device model on the same live socket refuses to start.
        second = Xenvfb(binary, ["--domid", "2", "--no-xenstore", "--qmp", f"unix:{path}"])
        rc = second.wait()
        check(rc == 1 and "in use" in second.output(), f"second instance: {rc} {second.output()}")
        check((await execute(qmp, "query-status"))["running"], "first still served")
        await qmp.disconnect()
    finally:
        dm.stop()
    regular = os.path.join(tmp, "file")
    open(regular, "w").close()
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{regular}"])
    rc = dm.wait()
    check(rc == 1 and "not a socket" in dm.output() and os.path.exists(regular), f"regular file: {rc} {dm.output()}")


async def privileges(binary, tmp):
    # -chroot and -runas apply once the sockets are open, as in QEMU.
    root = os.path.join(tmp, "root")
    os.mkdir(root)
    path = os.path.join(tmp, "qmp.sock")
    dm = Xenvfb(binary, ["--domid", "1", "--no-xenstore", "--qmp", f"unix:{path}",
                         "-chroot", root, "-runas", "65534:65534"])
    try:
        if os.geteuid() != 0:
            rc = dm.wait()
            check(rc == 1 and "-chroot" in dm.output(), f"unprivileged -chroot: {rc} {dm.output()}")
            return
        qmp = await client(path, retry=True)
        check((await execute(qmp, "query-status"))["running"], "served after dropping privileges")
        check(os.readlink(f"/proc/{dm.proc.pid}/root") == root, "not chrooted")
        status = open(f"/proc/{dm.proc.pid}/status").read()
        ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if line.startswith(("Uid:", "Gid:"))}
        check(ids["Uid"] == ["65534"] * 4 and ids["Gid"] == ["65534"] * 4, f"ids {ids}")
        await qmp.disconnect()
        dm.proc.send_signal(signal.SIGTERM)
        check(dm.wait() == 0, f"exit after SIGTERM:\n{dm.output()}")
    finally:
        dm.stop()


SCENARIOS = {
    "greeting": greeting, "queries": queries, "paused": paused, "errors": errors, "two-clients": two_clients,
    "garbage": garbage, "quit": quit_exits, "signals": signals, "fd-passing": fd_passing,
    "stale-socket": stale_socket, "privileges": privileges,
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SCENARIOS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}} XENVFB_BINARY", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xenvfb-qmp-") as tmp:
        try:
            asyncio.run(asyncio.wait_for(SCENARIOS[sys.argv[1]](sys.argv[2], tmp), 60))
        except AssertionError as e:
            print(f"FAIL {sys.argv[1]}: {e}", file=sys.stderr)
            return 1
    print(f"ok {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
