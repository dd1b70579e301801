#!/usr/bin/env python3
"""An independent RFB client that decodes every encoding the server offers and
compares every pixel with the test pattern.

Written from RFC 6143 (Raw, CopyRect, RRE, Hextile, TRLE, ZRLE, pseudo-encodings)
and the community rfbproto document (CoRRE, zlib, Tight, ExtendedDesktopSize),
not from the server's code. The test pattern is computed here on its own
(the same definition as Sources/RFBTestServer/main.swift, written separately).

Usage:
  rfb_reference.py [--websocket] PORT COMBO...
      COMBO is ENCODING:FORMAT, e.g. zrle:rgb565le tight:cmap8. For every
      combination it connects (over a WebSocket with --websocket), sets the
      pixel format and encodings, requests the whole frame, decodes and
      compares it; then presses '2' (or '1') so the server draws the other
      frame, requests an incremental update, decodes and compares again. One
      line per combination on stdout:
          COMBO ok|FAIL rects=ENC:N,... bytes=N [reason]
  rfb_reference.py --compare-png FILE FRAME
      Compares a client's screenshot (PNG, read with Pillow) with frame 1 or 2.
  rfb_reference.py --memory PORT PID CLIENTS
      Resident memory the server (process PID) spends per client: CLIENTS
      clients that got a whole frame in ZRLE and stay idle, then CLIENTS more
      that ask for whole frames in Raw and never read. Prints
          memory idle_kib=N stalled_kib=N (per client)
  rfb_reference.py --cpu PORT PID ENCODING FRAMES
      Server CPU time (utime+stime of PID) per whole-frame update in ENCODING
      (raw, zlib or zrle: the client skips the data without decoding it), and
      bytes per update. Prints
          cpu ENCODING ms_per_frame=N bytes_per_frame=N
  rfb_reference.py --latency PORT ROUNDS STALLERS
      Opens STALLERS connections that send 7 of the 12 version bytes and
      STALLERS that ask for whole frames and never read, then measures ROUNDS
      times how long a well-behaved client waits from a key press (which
      makes the server draw the other frame) to the decoded update. Prints
          latency p50=MS p90=MS max=MS
"""
import socket
import struct
import sys
import warnings
import zlib

warnings.filterwarnings("ignore", category=DeprecationWarning)

ENCODINGS = {"raw": 0, "copyrect": 1, "rre": 2, "corre": 4, "hextile": 5, "zlib": 6, "tight": 7, "trle": 15, "zrle": 16}
NAMES = {v: k for k, v in ENCODINGS.items()}
DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, LAST_RECT = -223, -308, -224
QEMU_POINTER, QEMU_EXTKEY = -257, -258

# name: (bits-per-pixel, depth, big-endian, true-colour, red/green/blue max, red/green/blue shift)
FORMATS = {
    "cmap8": (8, 8, 0, 0, 0, 0, 0, 0, 0, 0),
    "cmap16be": (16, 8, 1, 0, 0, 0, 0, 0, 0, 0),
    "rgb332": (8, 8, 0, 1, 7, 7, 3, 5, 2, 0),
    "bgr233": (8, 8, 0, 1, 7, 7, 3, 0, 3, 6),
    "rgb555le": (16, 15, 0, 1, 31, 31, 31, 10, 5, 0),
    "rgb555be": (16, 15, 1, 1, 31, 31, 31, 10, 5, 0),
    "bgr555le": (16, 15, 0, 1, 31, 31, 31, 0, 5, 10),
    "bgr555be": (16, 15, 1, 1, 31, 31, 31, 0, 5, 10),
    "rgb565le": (16, 16, 0, 1, 31, 63, 31, 11, 5, 0),
    "rgb565be": (16, 16, 1, 1, 31, 63, 31, 11, 5, 0),
    "bgr565le": (16, 16, 0, 1, 31, 63, 31, 0, 5, 11),
    "bgr565be": (16, 16, 1, 1, 31, 63, 31, 0, 5, 11),
    "rgb888le": (32, 24, 0, 1, 255, 255, 255, 16, 8, 0),
    "rgb888be": (32, 24, 1, 1, 255, 255, 255, 16, 8, 0),
    "bgr888le": (32, 24, 0, 1, 255, 255, 255, 0, 8, 16),
    "bgr888be": (32, 24, 1, 1, 255, 255, 255, 0, 8, 16),
    "rgb888hile": (32, 24, 0, 1, 255, 255, 255, 24, 16, 8),
    "rgb888hibe": (32, 24, 1, 1, 255, 255, 255, 24, 16, 8),
    "rgb101010le": (32, 30, 0, 1, 1023, 1023, 1023, 20, 10, 0),
    "rgb101010be": (32, 30, 1, 1, 1023, 1023, 1023, 20, 10, 0),
    "rgb888d32le": (32, 32, 0, 1, 255, 255, 255, 16, 8, 0),
}


class Failure(Exception):
    pass


# ---- The test pattern (see RFBTestServer) ----

def hash32(x, y, seed):
    v = (x * 374761393 + y * 668265263 + seed * 2246822519) & 0xFFFFFFFF
    v = ((v ^ (v >> 13)) * 1274126177) & 0xFFFFFFFF
    return v ^ (v >> 16)


CHANGES = [(10, 12, 50, 20), (70, 40, 33, 47), (130, 5, 40, 30), (5, 90, 150, 25)]


def pattern(x, y, frame):
    if frame == 2:
        for i, (rx, ry, rw, rh) in enumerate(CHANGES):
            if rx <= x < rx + rw and ry <= y < ry + rh:
                if i == 0:
                    return 0x123456
                if i == 1:
                    return 0xFFFFFF if (x // 3 + y) % 2 == 0 else 0
                if i == 2:
                    return hash32(x, y, 7) & 0xFFFFFF
                return (((x + y) % 7) * 36) << 8 | 0x80
    k = (x // 40 + y // 30) % 6
    if k == 0:
        return (0x804020 + ((x // 40) % 5) * 0x111111) & 0xFFFFFFFF
    if k == 1:
        return 0xF0F0F0 if y % 4 < 2 else 0x102030
    if k == 2:
        return [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00, 0x00FFFF][(x // 2 + y // 2) % 5]
    if k == 3:
        return (((x * 7 + y * 13) % 100) * 0x020305) & 0xFFFFFF
    if k == 4:
        return 0x404040 if (x // 97 + y) % 3 == 0 else 0xC0C0C0
    return hash32(x, y, 1) & 0xFFFFFF


def reduce_channel(v, maximum):
    """An 8-bit intensity in a channel of `maximum`: keep the top bits
    (floor(v*(max+1)/256)) below 255, scale with rounding above."""
    if maximum <= 255:
        return (v * (maximum + 1)) >> 8
    return (v * maximum + 127) // 255


# ---- Socket helpers ----

class Conn:
    def __init__(self, port, host="127.0.0.1", websocket=False):
        self.received = 0
        self.buffer = b""
        self.ws = None
        if websocket:
            # A WebSocket client we did not write carries the RFB bytes.
            from websockets.sync.client import connect
            self.ws = connect("ws://%s:%d/" % (host, port), subprotocols=["binary"], open_timeout=20,
                              max_size=None, compression=None)
        else:
            self.s = socket.create_connection((host, port), timeout=20)
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, n):
        out = bytearray()
        while len(out) < n:
            if self.ws is not None:
                if not self.buffer:
                    message = self.ws.recv(timeout=20)
                    if isinstance(message, str):
                        raise Failure("text WebSocket message from the server")
                    self.buffer = message
                take = self.buffer[:n - len(out)]
                self.buffer = self.buffer[len(take):]
                out += take
                continue
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise Failure("connection closed by the server")
            out += chunk
        self.received += n
        return bytes(out)

    def close(self):
        if self.ws is not None:
            self.ws.close()
        else:
            self.s.close()

    def u8(self):
        return self.read(1)[0]

    def u16(self):
        return struct.unpack(">H", self.read(2))[0]

    def u32(self):
        return struct.unpack(">I", self.read(4))[0]

    def s32(self):
        return struct.unpack(">i", self.read(4))[0]

    def send(self, data):
        if self.ws is not None:
            self.ws.send(data)
        else:
            self.s.sendall(data)


class Client:
    def __init__(self, port, fmt_name, encodings, websocket=False):
        self.c = Conn(port, websocket=websocket)
        self.fmt_name = fmt_name
        version = self.c.read(12)
        if version != b"RFB 003.008\n":
            raise Failure("server version %r" % version)
        self.c.send(b"RFB 003.008\n")
        n = self.c.u8()
        types = self.c.read(n)
        if 1 not in types:
            raise Failure("security types %r" % list(types))
        self.c.send(b"\x01")
        if self.c.u32() != 0:
            raise Failure("security result not OK")
        self.c.send(b"\x01")
        self.width, self.height = self.c.u16(), self.c.u16()
        server_format = self.c.read(16)
        name_length = self.c.u32()
        self.name = self.c.read(name_length)
        if server_format[:4] != bytes([32, 24, 0, 1]):
            raise Failure("server pixel format %r" % server_format)
        f = FORMATS[fmt_name]
        (self.bpp, self.depth, self.be, self.tc, self.rmax, self.gmax, self.bmax,
         self.rshift, self.gshift, self.bshift) = f
        self.c.send(struct.pack(">B3xBBBBHHHBBB3x", 0, *f))
        if not self.tc:
            # Colour map: pixel values index the map the server sends.
            self.rmax, self.gmax, self.bmax = 0, 0, 0
        self.c.send(struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings))
        self.fb = [None] * (self.width * self.height)
        self.colour_map = {}
        self.streams = {}
        self.tight_streams = [None] * 4
        self.seen = {}
        self.pixels_sent = 0
        self.bytes_per_pixel = self.bpp // 8

    # -- pixel values --

    def pixel_from_bytes(self, b):
        return int.from_bytes(b, "big" if self.be else "little")

    def read_pixels(self, n, data=None, offset=0):
        bp = self.bytes_per_pixel
        if data is None:
            data = self.c.read(n * bp)
            offset = 0
        order = "big" if self.be else "little"
        return [int.from_bytes(data[offset + i * bp: offset + (i + 1) * bp], order) for i in range(n)], offset + n * bp

    def cpixel_size(self):
        """ZRLE/TRLE CPIXEL (RFC 6143 7.7.5): 3 bytes for true colour, 32 bpp,
        depth <= 24 when the colour bits fit the 3 low or 3 high bytes."""
        if self.tc and self.bpp == 32 and self.depth <= 24:
            mask = (self.rmax << self.rshift) | (self.gmax << self.gshift) | (self.bmax << self.bshift)
            if mask < (1 << 24):
                return 3, "low"
            if mask & 0xFF == 0:
                return 3, "high"
        return self.bytes_per_pixel, None

    def cpixels(self, data, offset, n):
        size, which = self.cpixel_size()
        if which is None:
            return self.read_pixels(n, data, offset)
        out = []
        for i in range(n):
            b = data[offset + 3 * i: offset + 3 * i + 3]
            if len(b) < 3:
                raise Failure("truncated CPIXEL data")
            # Rebuild the 4-byte pixel in its own byte order, then read it.
            if which == "low":
                full = (b + b"\0") if not self.be else (b"\0" + b)
            else:
                full = (b"\0" + b) if not self.be else (b + b"\0")
            out.append(self.pixel_from_bytes(full))
        return out, offset + 3 * n

    def tpixel_size(self):
        """Tight TPIXEL: R, G, B bytes for true colour 32 bpp depth 24 with 8-bit channels."""
        if self.tc and self.bpp == 32 and self.depth == 24 and (self.rmax, self.gmax, self.bmax) == (255, 255, 255):
            return 3
        return self.bytes_per_pixel

    def tpixels(self, data, offset, n):
        if self.tpixel_size() == 3:
            out = []
            for i in range(n):
                r, g, b = data[offset + 3 * i: offset + 3 * i + 3]
                out.append(r << self.rshift | g << self.gshift | b << self.bshift)
            return out, offset + 3 * n
        return self.read_pixels(n, data, offset)

    # -- framebuffer --

    def put(self, x, y, w, h, values):
        if x + w > self.width or y + h > self.height:
            raise Failure("rectangle %dx%d+%d+%d outside the %dx%d framebuffer" % (w, h, x, y, self.width, self.height))
        if len(values) != w * h:
            raise Failure("rectangle data has %d pixels, expected %d" % (len(values), w * h))
        for j in range(h):
            self.fb[(y + j) * self.width + x:(y + j) * self.width + x + w] = values[j * w:(j + 1) * w]

    def fill(self, x, y, w, h, value):
        if x + w > self.width or y + h > self.height:
            raise Failure("subrectangle %dx%d+%d+%d outside the framebuffer" % (w, h, x, y))
        for j in range(h):
            self.fb[(y + j) * self.width + x:(y + j) * self.width + x + w] = [value] * w

    # -- messages --

    def request(self, incremental):
        self.c.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    def key(self, keysym):
        self.c.send(struct.pack(">BBxxI", 4, 1, keysym) + struct.pack(">BBxxI", 4, 0, keysym))

    def read_until_pixels(self):
        """Reads server messages until a FramebufferUpdate with pixel data."""
        while True:
            t = self.c.u8()
            if t == 0:
                if self.update():
                    return
            elif t == 1:
                self.c.read(1)
                first, n = self.c.u16(), self.c.u16()
                for i in range(n):
                    self.colour_map[first + i] = (self.c.u16(), self.c.u16(), self.c.u16())
            elif t == 2:
                pass
            elif t == 3:
                self.c.read(3)
                self.c.read(self.c.u32())
            else:
                raise Failure("unknown server message %d" % t)

    def update(self):
        self.c.read(1)
        n = self.c.u16()
        had_pixels = False
        for _ in range(n):
            x, y, w, h = self.c.u16(), self.c.u16(), self.c.u16(), self.c.u16()
            enc = self.c.s32()
            if enc == LAST_RECT:
                break
            if enc == DESKTOP_SIZE:
                self.width, self.height = w, h
                self.fb = [None] * (w * h)
                continue
            if enc == EXTENDED_DESKTOP_SIZE:
                screens = self.c.u8()
                self.c.read(3 + 16 * screens)
                if x == 0 and (w, h) != (self.width, self.height):
                    self.width, self.height = w, h
                    self.fb = [None] * (w * h)
                continue
            if enc in (QEMU_POINTER, QEMU_EXTKEY):
                continue
            if enc not in NAMES:
                raise Failure("unexpected encoding %d" % enc)
            self.seen[NAMES[enc]] = self.seen.get(NAMES[enc], 0) + 1
            self.pixels_sent += w * h
            getattr(self, "decode_" + NAMES[enc])(x, y, w, h)
            had_pixels = True
        return had_pixels

    # -- encodings --

    def decode_raw(self, x, y, w, h):
        values, _ = self.read_pixels(w * h)
        self.put(x, y, w, h, values)

    def decode_copyrect(self, x, y, w, h):
        sx, sy = self.c.u16(), self.c.u16()
        src = [self.fb[(sy + j) * self.width + sx + i] for j in range(h) for i in range(w)]
        self.put(x, y, w, h, src)

    def decode_rre(self, x, y, w, h, compact=False):
        n = self.c.u32()
        bg = self.read_pixels(1)[0][0]
        self.fill(x, y, w, h, bg)
        for _ in range(n):
            v = self.read_pixels(1)[0][0]
            if compact:
                sx, sy, sw, sh = self.c.read(4)
            else:
                sx, sy, sw, sh = self.c.u16(), self.c.u16(), self.c.u16(), self.c.u16()
            if sx + sw > w or sy + sh > h:
                raise Failure("RRE subrectangle outside its rectangle")
            self.fill(x + sx, y + sy, sw, sh, v)

    def decode_corre(self, x, y, w, h):
        if w > 255 or h > 255:
            raise Failure("CoRRE rectangle larger than 255")
        self.decode_rre(x, y, w, h, compact=True)

    def decode_hextile(self, x, y, w, h):
        bg = fg = None
        for ty in range(y, y + h, 16):
            th = min(16, y + h - ty)
            for tx in range(x, x + w, 16):
                tw = min(16, x + w - tx)
                mask = self.c.u8()
                if mask & 1:
                    values, _ = self.read_pixels(tw * th)
                    self.put(tx, ty, tw, th, values)
                    bg = fg = None  # neither may be carried over a raw tile
                    continue
                if mask & 2:
                    bg = self.read_pixels(1)[0][0]
                if bg is None:
                    raise Failure("hextile tile without a valid background")
                if mask & 4:
                    if mask & 16:
                        raise Failure("hextile ForegroundSpecified with SubrectsColoured")
                    fg = self.read_pixels(1)[0][0]
                self.fill(tx, ty, tw, th, bg)
                if mask & 8:
                    count = self.c.u8()
                    for _ in range(count):
                        if mask & 16:
                            colour = self.read_pixels(1)[0][0]
                        else:
                            if fg is None:
                                raise Failure("hextile subrectangles without a valid foreground")
                            colour = fg
                        xy, wh = self.c.u8(), self.c.u8()
                        sx, sy, sw, sh = xy >> 4, xy & 15, (wh >> 4) + 1, (wh & 15) + 1
                        if sx + sw > tw or sy + sh > th:
                            raise Failure("hextile subrectangle outside its tile")
                        self.fill(tx + sx, ty + sy, sw, sh, colour)
                    if mask & 16:
                        fg = None  # not carried over a SubrectsColoured tile
                # A solid tile keeps whatever foreground was valid.

    def decode_zlib(self, x, y, w, h):
        length = self.c.u32()
        data = self.inflate("zlib", self.c.read(length))
        if len(data) != w * h * self.bytes_per_pixel:
            raise Failure("zlib rectangle inflated to %d bytes, expected %d" % (len(data), w * h * self.bytes_per_pixel))
        values, _ = self.read_pixels(w * h, data, 0)
        self.put(x, y, w, h, values)

    def inflate(self, stream, data):
        d = self.streams.get(stream)
        if d is None:
            d = self.streams[stream] = zlib.decompressobj()
        return d.decompress(data)

    def decode_tight(self, x, y, w, h):
        if w > 2048:
            raise Failure("Tight rectangle wider than 2048")
        control = self.c.u8()
        for i in range(4):
            if control & (1 << i):
                self.tight_streams[i] = None
        method = control >> 4
        if method == 8:  # FillCompression
            value = self.tpixels(self.c.read(self.tpixel_size()), 0, 1)[0][0]
            self.fill(x, y, w, h, value)
            return
        if method == 9:
            raise Failure("Tight JPEG (lossy) sent")
        if method > 9:
            raise Failure("invalid Tight compression control %#x" % control)
        stream = method & 3
        filter_id = self.c.u8() if method & 4 else 0
        tpp = self.tpixel_size()
        palette = None
        if filter_id == 0:
            size = w * h * tpp
        elif filter_id == 1:
            n = self.c.u8() + 1
            if n < 2:
                raise Failure("Tight palette of one colour")
            palette = self.tpixels(self.c.read(n * tpp), 0, n)[0]
            size = (w + 7) // 8 * h if n == 2 else w * h
        elif filter_id == 2:
            raise Failure("Tight gradient filter sent")
        else:
            raise Failure("unknown Tight filter %d" % filter_id)
        if size < 12:
            data = self.c.read(size)
        else:
            b0 = self.c.u8()
            length = b0 & 0x7F
            if b0 & 0x80:
                b1 = self.c.u8()
                length |= (b1 & 0x7F) << 7
                if b1 & 0x80:
                    length |= self.c.u8() << 14
            compressed = self.c.read(length)
            d = self.tight_streams[stream]
            if d is None:
                d = self.tight_streams[stream] = zlib.decompressobj()
            data = d.decompress(compressed)
            if len(data) != size:
                raise Failure("Tight data inflated to %d bytes, expected %d" % (len(data), size))
        if palette is None:
            values = self.tpixels(data, 0, w * h)[0]
        elif len(palette) == 2:
            row = (w + 7) // 8
            values = [palette[(data[j * row + i // 8] >> (7 - i % 8)) & 1] for j in range(h) for i in range(w)]
        else:
            if max(data) >= len(palette):
                raise Failure("Tight palette index out of range")
            values = [palette[b] for b in data]
        self.put(x, y, w, h, values)

    def decode_zrle(self, x, y, w, h):
        length = self.c.u32()
        data = self.inflate("zrle", self.c.read(length))
        offset = self.rle_tiles(data, 0, x, y, w, h, 64, trle=False)
        if offset != len(data):
            raise Failure("ZRLE data has %d bytes left over" % (len(data) - offset))

    def decode_trle(self, x, y, w, h):
        # TRLE is not length-prefixed: read tile by tile from the socket.
        self.rle_tiles(None, 0, x, y, w, h, 16, trle=True)

    def rle_tiles(self, data, offset, x, y, w, h, size, trle):
        cpp, _ = self.cpixel_size()
        reader = BytesReader(data, offset) if data is not None else SocketReader(self.c)
        last_palette = []
        for ty in range(y, y + h, size):
            th = min(size, y + h - ty)
            for tx in range(x, x + w, size):
                tw = min(size, x + w - tx)
                sub = reader.u8()
                n_pixels = tw * th
                if sub == 0:
                    values = self.cpixels(reader.take(n_pixels * cpp), 0, n_pixels)[0]
                elif sub == 1:
                    v = self.cpixels(reader.take(cpp), 0, 1)[0][0]
                    values = [v] * n_pixels
                elif 2 <= sub <= 16 or (trle and sub == 127):
                    if sub == 127:
                        palette = last_palette
                        if not 2 <= len(palette) <= 16:
                            raise Failure("TRLE palette reuse without a packed palette")
                    else:
                        palette = self.cpixels(reader.take(sub * cpp), 0, sub)[0]
                    last_palette = palette
                    n = len(palette)
                    bits = 1 if n == 2 else 2 if n <= 4 else 4
                    row_bytes = (tw * bits + 7) // 8
                    packed = reader.take(row_bytes * th)
                    values = []
                    for j in range(th):
                        for i in range(tw):
                            bit = i * bits
                            byte = packed[j * row_bytes + bit // 8]
                            index = (byte >> (8 - bits - bit % 8)) & ((1 << bits) - 1)
                            if index >= n:
                                raise Failure("packed palette index out of range")
                            values.append(palette[index])
                elif sub == 128:
                    values = []
                    while len(values) < n_pixels:
                        v = self.cpixels(reader.take(cpp), 0, 1)[0][0]
                        values += [v] * read_run(reader)
                elif sub >= 130 or (trle and sub == 129):
                    if sub == 129:
                        palette = last_palette
                        if not palette:
                            raise Failure("TRLE palette RLE reuse without a palette")
                    else:
                        palette = self.cpixels(reader.take((sub - 128) * cpp), 0, sub - 128)[0]
                    last_palette = palette
                    values = []
                    while len(values) < n_pixels:
                        index = reader.u8()
                        run = read_run(reader) if index & 128 else 1
                        index &= 127
                        if index >= len(palette):
                            raise Failure("palette RLE index out of range")
                        values += [palette[index]] * run
                else:
                    raise Failure("invalid %s subencoding %d" % ("TRLE" if trle else "ZRLE", sub))
                if len(values) != n_pixels:
                    raise Failure("run past the end of a tile (%d of %d pixels)" % (len(values), n_pixels))
                self.put(tx, ty, tw, th, values)
        return reader.offset

    # -- checking --

    def expected(self, frame):
        out = []
        for y in range(self.height):
            for x in range(self.width):
                p = pattern(x, y, frame)
                r, g, b = (p >> 16) & 255, (p >> 8) & 255, p & 255
                if self.tc:
                    out.append((reduce_channel(r, self.rmax), reduce_channel(g, self.gmax), reduce_channel(b, self.bmax)))
                else:
                    out.append((r >> 5, g >> 5, b >> 6))  # BGR233 colour map
        return out

    def check(self, frame):
        exp = self.expected(frame)
        bad = 0
        first = None
        for i, v in enumerate(self.fb):
            if v is None:
                got = None
            elif self.tc:
                got = ((v >> self.rshift) & self.rmax, (v >> self.gshift) & self.gmax, (v >> self.bshift) & self.bmax)
            else:
                if v not in self.colour_map:
                    raise Failure("pixel value %d has no colour map entry" % v)
                r16, g16, b16 = self.colour_map[v]
                got = (r16 >> 13, g16 >> 13, b16 >> 14)
                if (v & 7, (v >> 3) & 7, v >> 6) != got:
                    raise Failure("colour map entry %d is %r" % (v, self.colour_map[v]))
            if got != exp[i]:
                bad += 1
                if first is None:
                    first = (i % self.width, i // self.width, got, exp[i])
        if bad:
            raise Failure("%d of %d pixels differ; first at (%d,%d): got %r, expected %r" % ((bad, len(exp)) + first))


class BytesReader:
    def __init__(self, data, offset):
        self.data, self.offset = data, offset

    def u8(self):
        if self.offset >= len(self.data):
            raise Failure("truncated tile data")
        self.offset += 1
        return self.data[self.offset - 1]

    def take(self, n):
        if self.offset + n > len(self.data):
            raise Failure("truncated tile data")
        self.offset += n
        return self.data[self.offset - n:self.offset]


class SocketReader:
    def __init__(self, conn):
        self.conn, self.offset = conn, 0

    def u8(self):
        self.offset += 1
        return self.conn.u8()

    def take(self, n):
        self.offset += n
        return self.conn.read(n)


def read_run(reader):
    total = 1
    while True:
        b = reader.u8()
        total += b
        if b != 255:
            return total


def run_combo(port, combo, frame, websocket=False):
    enc_name, fmt_name = combo.split(":")
    enc = ENCODINGS[enc_name]
    # The wanted encoding, then what a modern client sends: raw, desktop size,
    # QEMU's extensions, a compression level and a JPEG quality level (which a
    # lossless server must ignore).
    encodings = [enc, 0, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, QEMU_POINTER, QEMU_EXTKEY, -256 + 6, -32 + 5]
    client = Client(port, fmt_name, encodings, websocket)
    client.request(0)
    client.read_until_pixels()
    client.check(frame)
    full_pixels = client.pixels_sent
    other = 2 if frame == 1 else 1
    client.key(ord(str(other)))
    client.request(1)
    client.read_until_pixels()
    client.check(other)
    incremental_pixels = client.pixels_sent - full_pixels
    if incremental_pixels >= full_pixels:
        raise Failure("the incremental update resent the whole frame")
    client.c.close()
    return other, client.seen, client.c.received


def compare_png(path, frame):
    from PIL import Image
    image = Image.open(path).convert("RGB")
    width, height = image.size
    data = image.load()
    bad = 0
    first = None
    for y in range(height):
        for x in range(width):
            p = pattern(x, y, frame)
            want = ((p >> 16) & 255, (p >> 8) & 255, p & 255)
            if data[x, y] != want:
                bad += 1
                if first is None:
                    first = (x, y, data[x, y], want)
    print("size=%dx%d differing=%d%s" % (width, height, bad, "" if first is None else " first=%r" % (first,)))
    sys.exit(1 if bad else 0)


def latency(port, rounds, stallers):
    import time
    idle = []
    for _ in range(stallers):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"RFB 003")  # 7 of 12 version bytes, then nothing
        idle.append(s)
    for _ in range(stallers):
        c = Client(port, "rgb888le", [0])
        c.c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.c.s.setblocking(False)
        for _ in range(2000):  # whole frames, never read
            try:
                c.c.s.send(struct.pack(">BBHHHH", 3, 0, 0, 0, 65535, 65535))
            except BlockingIOError:
                break
        idle.append(c.c.s)
    client = Client(port, "rgb888le", [16, DESKTOP_SIZE])
    client.request(0)
    client.read_until_pixels()
    frame = 1
    times = []
    for _ in range(rounds):
        frame = 2 if frame == 1 else 1
        start = time.monotonic()
        client.key(ord(str(frame)))
        client.request(1)
        client.read_until_pixels()
        times.append((time.monotonic() - start) * 1000)
    client.check(frame)
    times.sort()
    print("latency p50=%.1f p90=%.1f max=%.1f" % (times[len(times) // 2], times[len(times) * 9 // 10], times[-1]))
    for s in idle:
        s.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failure("no VmRSS for %d" % pid)


def memory(port, pid, n):
    import time
    warm = Client(port, "rgb888le", [16])
    warm.request(0)
    warm.read_until_pixels()
    warm.c.close()
    time.sleep(0.5)
    before = rss_kib(pid)
    idle = []
    for _ in range(n):
        c = Client(port, "rgb888le", [16])
        c.request(0)
        c.read_until_pixels()
        idle.append(c)
    time.sleep(0.5)
    after_idle = rss_kib(pid)
    stalled = []
    for _ in range(n):
        # Raw, so that every request queues megabytes: the output bound is what holds.
        c = Client(port, "rgb888le", [0])
        c.c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.c.s.setblocking(False)
        for _ in range(200):
            try:
                c.c.s.send(struct.pack(">BBHHHH", 3, 0, 0, 0, 65535, 65535))
            except BlockingIOError:
                break
        stalled.append(c)
    time.sleep(2)
    after_stalled = rss_kib(pid)
    print("memory idle_kib=%d stalled_kib=%d" % ((after_idle - before) // n, (after_stalled - after_idle) // n))


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu(port, pid, name, frames):
    import os
    enc = ENCODINGS[name]
    if enc not in (0, 6, 16):
        raise Failure("--cpu skips data only for raw, zlib and zrle")
    client = Client(port, "rgb888le", [enc])
    total = 0
    start = cpu_ticks(pid)
    for _ in range(frames):
        client.request(0)
        while True:
            if client.c.u8() != 0:
                raise Failure("unexpected message")
            client.c.read(1)
            n = client.c.u16()
            for _ in range(n):
                x, y, w, h, e = struct.unpack(">HHHHi", client.c.read(12))
                if e == 0:
                    client.c.read(w * h * 4)
                else:
                    client.c.read(client.c.u32())
            if n:
                break
    ticks = cpu_ticks(pid) - start
    total = client.c.received
    hz = os.sysconf("SC_CLK_TCK")
    print("cpu %s ms_per_frame=%.1f bytes_per_frame=%d" % (name, ticks * 1000.0 / hz / frames, total // frames))


def main():
    if sys.argv[1] == "--cpu":
        cpu(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    if sys.argv[1] == "--memory":
        memory(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    if sys.argv[1] == "--compare-png":
        compare_png(sys.argv[2], int(sys.argv[3]))
    if sys.argv[1] == "--latency":
        latency(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    websocket = sys.argv[1] == "--websocket"
    args = sys.argv[2:] if websocket else sys.argv[1:]
    port = int(args[0])
    frame = 1
    failures = 0
    for combo in args[1:]:
        try:
            frame, seen, received = run_combo(port, combo, frame, websocket)
            rects = ",".join("%s:%d" % kv for kv in sorted(seen.items()))
            print("%s ok rects=%s bytes=%d" % (combo, rects, received), flush=True)
        except Exception as e:
            failures += 1
            print("%s FAIL %s" % (combo, e), flush=True)
            # The frame may or may not have toggled: ask the server for frame 1 on a fresh connection.
            try:
                c = Client(port, "rgb888le", [0], websocket)
                c.key(ord("1"))
                c.c.close()
                frame = 1
            except Exception:
                pass
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
