#!/usr/bin/env python3
"""Writes the test pattern the guest draws: WIDTH x HEIGHT pixels in the byte
order of Linux's 32 bpp xen-fbfront framebuffer (B, G, R, X per pixel, X = 0).

Every pixel's colour depends on both its coordinates, so a shifted, mirrored,
cropped or channel-swapped screenshot cannot match it. Variant 2 (drawn over
part of the first later, to check updates) swaps the roles of x and y.
Usage: pattern.py OUT.raw [WIDTH HEIGHT [VARIANT]]
"""
import sys


def pattern(width, height, variant=1):
    rows = []
    for y in range(height):
        row = bytearray(width * 4)
        for x in range(width):
            r = (x * 255) // (width - 1)
            g = (y * 255) // (height - 1)
            b = ((x // 50) * 37 + (y // 50) * 91) & 0xFF
            if (x // 100 + y // 100) % 2 == 0 and x % 100 < 10:
                r, g, b = 255 - r, 255 - g, 255 - b
            if variant == 2:
                r, g, b = g, b, r
            row[x * 4:x * 4 + 4] = bytes((b, g, r, 0))
        rows.append(bytes(row))
    return b"".join(rows)


if __name__ == "__main__":
    width, height = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (800, 600)
    variant = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    with open(sys.argv[1], "wb") as f:
        f.write(pattern(width, height, variant))
