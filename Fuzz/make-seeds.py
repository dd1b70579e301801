#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (Fuzz/corpus/<target>/).

Each seed is a well-formed input in the target's format (see the comment at
the top of Fuzz/<target>/<target>.swift), so the fuzzer starts from inputs
that reach deep into the parser. Rerun after changing a format:
    python3 Fuzz/make-seeds.py
"""
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def i32(v):
    return struct.pack("<i", v)


# --- FuzzVfbRing ------------------------------------------------------------
def vfb_header(width, height, stride, mem, depth):
    h = u32(0) * 4 + i32(width) + i32(height) + u32(stride) + u32(mem) + bytes([depth]) + bytes(7)
    assert len(h) == 40
    return h


def event(kind, *values):
    e = bytes([kind]) + bytes(3) + b"".join(i32(v) for v in values)
    return e + bytes(40 - len(e))


def update(x, y, w, h):
    return event(2, x, y, w, h)


def resize(w, h, stride, depth, offset):
    return event(3, w, h, stride, depth, offset)


def vfb(proto, header, cons, rounds):
    out = bytes([proto]) + header + u32(cons)
    for prod, events in rounds:
        out += u32(prod) + bytes([len(events)]) + b"".join(events)
    return out


h32 = vfb_header(64, 48, 256, 65536, 32)
write("FuzzVfbRing", "updates", vfb(2, h32, 0, [(2, [update(0, 0, 8, 8), update(10, 10, 5, 5)]), (3, [update(1, 2, 3, 4)])]))
write("FuzzVfbRing", "resize", vfb(2, h32, 0, [(1, [resize(32, 32, 128, 32, 0)]), (2, [update(0, 0, 32, 32)])]))
write("FuzzVfbRing", "resize-16bpp", vfb(0, h32, 0, [(2, [resize(100, 50, 200, 16, 256), update(0, 0, 100, 50)]), (2, [])]))
write("FuzzVfbRing", "depth8", vfb(1, vfb_header(64, 48, 64, 4096, 8), 0, [(1, [update(0, 0, 64, 48)]), (1, [])]))
write("FuzzVfbRing", "depth24", vfb(2, vfb_header(40, 30, 120, 8192, 24), 7, [(9, [update(0, 0, 4, 4), update(3, 3, 40, 30)]), (9, [])]))
write("FuzzVfbRing", "bogus-rects", vfb(2, h32, 0, [(4, [update(-5, -5, 10, 10), update(0x7FFFFFF0, 0, 0x7FFFFFFF, 5),
                                                         update(10, 10, -3, 4), update(-2**31, -2**31, -1, -1)]), (4, [])]))
write("FuzzVfbRing", "flood", vfb(2, h32, 0, [(51, [update(i, i % 48, 1, 1) for i in range(51)]), (51, [])]))
write("FuzzVfbRing", "prod-far-ahead", vfb(2, h32, 0, [(1000, [update(0, 0, 1, 1)]), (0xFFFFFF00, [])]))
write("FuzzVfbRing", "wrap", vfb(2, h32, 0xFFFFFFFE, [(1, [update(0, 0, 2, 2), update(1, 1, 2, 2), update(2, 2, 2, 2)]), (1, [])]))
write("FuzzVfbRing", "bad-resizes", vfb(2, h32, 0, [(5, [resize(64, 48, 0, 32, 0), resize(64, 48, 256, 12, 0),
                                                         resize(64, 48, 256, 32, 65536), resize(2**31 - 1, 2**31 - 1, 65536, 32, 0),
                                                         resize(64, 48, 256, 32, -4)]), (5, [])]))
write("FuzzVfbRing", "huge-mem", vfb(2, vfb_header(64, 48, 256, 0xFFFFFFFF, 32), 0, [(1, [update(0, 0, 1, 1)])]))

# --- FuzzVkbdRing -----------------------------------------------------------
def op(n, *operands):
    return bytes([n]) + b"".join(operands)


keys = b"".join(op(4, u32(30), bytes([1])) + op(4, u32(30), bytes([0])) for _ in range(30))
write("FuzzVkbdRing", "keys-full-ring", bytes([3]) + u32(0) + keys + op(1) + keys)
write("FuzzVkbdRing", "pointer", bytes([1]) + u32(5) + op(5, i32(10), i32(20)) + op(5, i32(-5), i32(100000)) + op(7, i32(-1))
      + op(8, bytes([99, 9])) + op(5, i32(63), i32(47)) + op(1))
write("FuzzVkbdRing", "relative", bytes([0]) + u32(0) + op(6, i32(3), i32(-4)) + op(6, i32(2**31 - 1), i32(-2**31)) + op(7, i32(2)) + op(1))
write("FuzzVkbdRing", "bad-cons", bytes([3]) + u32(100) + op(0, u32(0xFFFFFFFF)) + keys + op(0, u32(100)) + op(1))
write("FuzzVkbdRing", "out-ring", bytes([1]) + u32(0) + op(3, bytes([3]), event(1, 1, 2)) + op(2, u32(7)) + op(2, u32(0xFFFFFFFF)) + keys)

# --- FuzzGeometry -----------------------------------------------------------
def geom(fblen, w, h, depth, stride, offset):
    return u32(fblen) + i32(w) + i32(h) + i32(depth) + i32(stride) + i32(offset)


write("FuzzGeometry", "valid", geom(2 << 20, 800, 600, 32, 3200, 0) + geom(2 << 20, 640, 480, 16, 1280, 4096))
write("FuzzGeometry", "clamp", geom(1 << 20, 5000, 5000, 8, 1000, 999) + geom(4096, 2**31 - 1, 2**31 - 1, 24, 4096, 0))
write("FuzzGeometry", "refuse", geom(1 << 20, 800, 600, 12, 3200, 0) + geom(1 << 20, 800, 600, 32, 0, 0)
      + geom(1 << 20, 800, 600, 32, 3200, -1) + geom(0, 1, 1, 32, 4, 0) + geom(1 << 20, -1, -1, 32, 4, 0))

# --- FuzzXenstored ----------------------------------------------------------
XS = dict(directory=1, read=2, get_perms=3, watch=4, unwatch=5, transaction_start=6, transaction_end=7,
          introduce=8, release=9, get_domain_path=10, write=11, mkdir=12, rm=13, set_perms=14,
          is_domain_introduced=16, resume=18, set_target=19, reset_watches=21, directory_part=22)


def xs(kind, *args, tx=0, req=1, raw=None):
    payload = raw if raw is not None else b"".join(a.encode() + b"\0" for a in args)
    return struct.pack("<IIII", XS[kind], req, tx, len(payload)) + payload


def xs_write(path, value, tx=0):
    return xs("write", raw=path.encode() + b"\0" + value.encode(), tx=tx)


basic = (xs_write("/local/domain/5/a", "1") + xs("read", "/local/domain/5/a") + xs("directory", "/local/domain/5")
         + xs("get_perms", "/local/domain/5/a") + xs("mkdir", "/local/domain/5/b/c") + xs("rm", "/local/domain/5/b")
         + xs("directory_part", "/local/domain", "0"))
write("FuzzXenstored", "dom0-basic", bytes([0]) + basic)
write("FuzzXenstored", "guest-basic", bytes([1]) + xs_write("device/vfb/0/state", "1") + xs("read", "device/vfb/0/state")
      + xs_write("/local/domain/0/backend/x", "no") + xs("directory", "device") + xs("get_domain_path", "5"))
write("FuzzXenstored", "watches", bytes([1]) + xs("watch", "device", "tok") + xs_write("device/x", "1") + xs("unwatch", "device", "tok")
      + xs("watch", "@introduceDomain", "i") + xs("reset_watches"))
write("FuzzXenstored", "transaction", bytes([0]) + xs("transaction_start", "") + xs_write("/t/a", "1", tx=1) + xs("read", "/t/a", tx=1)
      + xs("transaction_end", "T", tx=1) + xs("transaction_start", "") + xs_write("/t/b", "2", tx=2) + xs("transaction_end", "F", tx=2))
write("FuzzXenstored", "perms", bytes([0]) + xs_write("/p/x", "v") + xs("set_perms", "/p/x", "n0", "r5", "w7", "b9")
      + xs("get_perms", "/p/x") + xs("set_perms", "/p/x", "q1"))
write("FuzzXenstored", "domains", bytes([0]) + xs("introduce", "7", "0", "0") + xs("is_domain_introduced", "7") + xs("set_target", "7", "5")
      + xs("resume", "7") + xs("release", "7"))
write("FuzzXenstored", "bad-messages", bytes([1]) + struct.pack("<IIII", 99, 1, 0, 0) + struct.pack("<IIII", 2, 1, 77, 2) + b"/\0"
      + xs("read", raw=b"no-nul") + xs("write", raw=b"/x") + struct.pack("<IIII", 2, 1, 0, 5000))

# --- FuzzJSON and FuzzQMPStream ---------------------------------------------
qmp = [b'{"execute": "qmp_capabilities"}',
       b'{"execute": "query-status", "id": 7}',
       b'{"execute": "change-vnc-password", "arguments": {"password": "s3cr\\u00e9t"}}',
       b'{"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "ctrl"}, {"type": "number", "data": 29}], "hold-time": 100}}',
       b'{"execute": "xen-set-global-dirty-log", "arguments": {"enable": true}}',
       b'[1, -2, 3.5e10, -0.0, 1E-7, 18446744073709551616, null, false, "\\ud83d\\ude00", {}]',
       b'{"a": {"b": {"c": [[[[]]]]}}}']
for i, m in enumerate(qmp):
    write("FuzzJSON", "qmp-%d" % i, m)
write("FuzzQMPStream", "libxl", b"\x05" + b"\r\n".join(qmp[:5]) + b"\r\n")
write("FuzzQMPStream", "python", b"\x0b" + b"".join(qmp))
write("FuzzQMPStream", "garbage", b"\x03" + b"hello\n" + qmp[0] + b"\n}]}\n" + b'{"x": "}{"}' + b"\n\n\t" + b"[" * 40 + b"]" * 40)

# --- FuzzArgv --------------------------------------------------------------
def argv(mode, *args):
    return bytes([mode]) + b"\0".join(a.encode() for a in args)


write("FuzzArgv", "libxl", argv(0, "-xen-domid", "5", "-no-shutdown",
                                "-chardev", "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-5,server=on,wait=off",
                                "-mon", "chardev=libxl-cmd,mode=control", "-nodefaults", "-no-user-config", "-xen-attach",
                                "-name", "guest", "-vnc", "127.0.0.1:0,to=99,password=on", "-display", "none", "-k", "en-us",
                                "-machine", "xenpv", "-m", "128"))
write("FuzzArgv", "restrict", argv(0, "-xen-domid", "7", "-chardev", "socket,id=libxl-cmd,fd=4,server=on,wait=off", "-S",
                                   "-mon", "chardev=libxl-cmd,mode=control", "-xen-domid-restrict", "-chroot", "/var/run/xen/qemu-root-7",
                                   "-runas", "1000:1000", "-incoming", "fd:12", "-nographic"))
write("FuzzArgv", "demo", argv(1, "--seconds", "10", "--display", "png:dir=out/demo,interval=1000", "--sdl"))
write("FuzzArgv", "vnc-forms", argv(0, "-xen-domid", "1", "-vnc", "[::1]:5,password=on", "-vnc", "unix:/tmp/v.sock", "-vnc", "none"))

# --- FuzzRFB ---------------------------------------------------------------
# Session inputs: byte 0 = mode (bit 0: handshake prepended, bit 1: password),
# then steps: 0 feed (length byte, bytes), 3 read, 4 resize (w, h), 5 dirty
# (x, y, w, h as signed/unsigned bytes), 6 pump without reading.
def feed(data):
    out = b""
    while data:
        chunk, data = data[:255], data[255:]
        out += bytes([0, len(chunk)]) + chunk
    return out


def set_encodings(*encodings):
    return struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings)


def pixel_format(bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs):
    return struct.pack(">B3xBBBBHHHBBB3x", 0, bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs)


REQUEST_FULL = struct.pack(">BBHHHH", 3, 0, 0, 0, 65535, 65535)
REQUEST_INC = struct.pack(">BBHHHH", 3, 1, 0, 0, 65535, 65535)
formats = {"rgb565be": (16, 16, 1, 1, 31, 63, 31, 11, 5, 0), "cmap8": (8, 8, 0, 0, 0, 0, 0, 0, 0, 0),
           "rgb888le": (32, 24, 0, 1, 255, 255, 255, 16, 8, 0), "rgb101010be": (32, 30, 1, 1, 1023, 1023, 1023, 20, 10, 0)}
for name, enc in [("raw", 0), ("rre", 2), ("corre", 4), ("hextile", 5), ("zlib", 6), ("tight", 7), ("trle", 15), ("zrle", 16)]:
    for fname, f in formats.items():
        body = feed(pixel_format(*f) + set_encodings(enc, -223, -308, -257, -258, -250) + REQUEST_FULL)
        body += b"\x03" + b"\x05\x03\x04\x20\x10" + feed(REQUEST_INC) + b"\x06\x03"
        body += b"\x04\x30\x18" + feed(REQUEST_INC) + b"\x03" + feed(struct.pack(">BxHHBx", 251, 100, 100, 1) + bytes(16)) + b"\x03"
        write("FuzzRFB", "session-%s-%s" % (name, fname), b"\x01" + body)
write("FuzzRFB", "handshake-33", b"\x00" + feed(b"RFB 003.003\n\x01" + set_encodings(16) + REQUEST_FULL) + b"\x03")
write("FuzzRFB", "handshake-auth", b"\x03" + feed(b"\x02" + bytes(range(16)) + b"\x01") + b"\x03")
write("FuzzRFB", "input", b"\x01" + feed(struct.pack(">BBxxI", 4, 1, 0x61) + struct.pack(">BBHH", 5, 1, 300, 20)
                                       + struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1e) + struct.pack(">BxxxI", 6, 3) + b"abc"
                                       + struct.pack(">Bxxxi", 6, -8) + bytes(8)) + b"\x03")
ws = b""
for opcode, payload, fin in [(2, b"RFB 003.008\n", True), (9, b"hi", True), (2, b"\x01\x01", False), (0, b"x" * 300, True), (8, b"\x03\xe8", True)]:
    mask = b"\x11\x22\x33\x44"
    header = bytes([(0x80 if fin else 0) | opcode])
    header += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    ws += header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
write("FuzzRFB", "websocket-frames", b"\xc8" + ws)
write("FuzzRFB", "websocket-upgrade", b"\xc8" + b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n")
write("FuzzRFB", "parser", b"\xf0" + pixel_format(*formats["rgb565be"]) + set_encodings(16, 7, -223) + REQUEST_INC
      + struct.pack(">BBxxI", 4, 1, 0x61) + struct.pack(">BxHHBx", 251, 100, 100, 2) + bytes(32)
      + struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1e))


# --- FuzzVdisplRing ---------------------------------------------------------
def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def dreq(op, body, rid=0):
    e = u16(rid) + bytes([op]) + bytes(5) + body
    return e + bytes(64 - len(e))


def dbuf_create(cookie, w, h, bpp, size, directory, flags=0, offset=0):
    return dreq(0x10, u64(cookie) + u32(w) + u32(h) + u32(bpp) + u32(size) + u32(flags) + u32(directory) + u32(offset))


def fb_attach(dbuf, fb, w, h, fourcc):
    return dreq(0x12, u64(dbuf) + u64(fb) + u32(w) + u32(h) + fourcc)


def set_config(fb, x, y, w, h, bpp):
    return dreq(0x14, u64(fb) + u32(x) + u32(y) + u32(w) + u32(h) + u32(bpp))


def vdispl(first, edits, rounds):
    out = bytes([first, len(edits)])
    for page, offset, data in edits:
        out += bytes([page]) + u16(offset) + bytes([len(data)]) + data
    for connector, requests, mode, value in rounds:
        out += bytes([connector, len(requests)]) + b"".join(requests) + bytes([mode]) + u32(value)
    return out


# Page 0 is a page directory listing grant 9 (page 1); grants 8..23 are pages 0..15.
directory = [(0, 0, u32(0) + u32(9) + u32(10))]
session = [dbuf_create(1, 16, 8, 32, 512, 8), fb_attach(1, 100, 16, 8, b"XR24"), set_config(100, 0, 0, 16, 8, 32),
           dreq(0x15, u64(100))]
write("FuzzVdisplRing", "session", vdispl(0, directory, [(0, session, 0, 0), (0, [dreq(0x15, u64(100))], 0, 0)]))
write("FuzzVdisplRing", "two-connectors", vdispl(1, directory, [
    (0, [dbuf_create(1, 64, 48, 16, 6144, 8), fb_attach(1, 7, 64, 48, b"RG16"), set_config(7, 0, 0, 64, 48, 16)], 0, 0),
    (1, [set_config(7, 3, 2, 64, 48, 16), dreq(0x15, u64(7)), dreq(0x15, u64(7))], 2, 0x40000000)]))
write("FuzzVdisplRing", "formats", vdispl(4, directory, [
    (0, [dbuf_create(2, 8, 2, 16, 64, 8), fb_attach(2, 1, 8, 2, b"YUYV"), set_config(1, 0, 0, 8, 2, 16),
         fb_attach(2, 3, 8, 2, b"XR15"), set_config(3, 1, 0, 8, 2, 16), dbuf_create(3, 8, 2, 24, 48, 8),
         fb_attach(3, 4, 8, 2, b"RG24"), set_config(4, 0, 1, 8, 2, 24)], 0, 0)]))
write("FuzzVdisplRing", "bad-requests", vdispl(0, directory, [
    (0, [dbuf_create(0, 16, 8, 32, 512, 8), dbuf_create(5, 16, 8, 32, 511, 8), dbuf_create(6, 16, 8, 12, 512, 8),
         dbuf_create(7, 16, 8, 32, 512, 99), dbuf_create(8, 16, 8, 32, 0xFFFFFFFF, 8, offset=0xFFFFFFF0),
         dbuf_create(9, 16, 8, 32, 512, 8, flags=1), fb_attach(77, 1, 1, 1, b"XR24"), dreq(0x15, u64(1)),
         dreq(0x13, u64(5)), dreq(0x11, u64(5)), dreq(0x16, u32(32768) + u32(8)), dreq(0x7F, b"")], 0, 0)]))
write("FuzzVdisplRing", "prod-lies", vdispl(0, directory, [(0, session, 1, 1000), (0, [], 1, 0xFFFFFFFF), (0, [], 3, 5)]))
write("FuzzVdisplRing", "long-directory", vdispl(0, [(0, 0, u32(8) + u32(9) * 60)], [
    (0, [dbuf_create(1, 1024, 2, 32, 8192, 8), dbuf_create(2, 1024, 1024, 32, 4 << 20, 8)], 0, 0)]))
