#!/usr/bin/python3
"""Writes an image folder (one sub-folder of PNGs per class) from a data set
Debian ships, for the factory example and the tests: the 8x8 handwritten
digits of python3-sklearn (1,797 images, 10 classes).

Usage: /usr/bin/python3 scripts/make_image_folder.py OUT_DIR [LIMIT]
The PNGs (8-bit grayscale) are written with Python's zlib alone.
"""
import gzip
import os
import struct
import sys
import zlib

DIGITS = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"


def png(pixels, width, height):
    """An 8-bit grayscale PNG of `pixels` (row-major bytes)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(pixels[y * width:(y + 1) * width]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    out = argv[1]
    limit = int(argv[2]) if len(argv) > 2 else 0
    if not os.path.exists(DIGITS):
        print("make_image_folder: %s is missing (apt-get install python3-sklearn)" % DIGITS, file=sys.stderr)
        return 1
    counts = {}
    with gzip.open(DIGITS, "rt") as f:
        for n, line in enumerate(f):
            if limit and n >= limit:
                break
            values = [int(float(v)) for v in line.strip().split(",")]
            pixels, label = values[:64], values[64]
            folder = os.path.join(out, "digit-%d" % label)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "%04d.png" % n), "wb") as img:
                img.write(png([min(255, p * 16) for p in pixels], 8, 8))  # 0..16 -> 0..255
            counts[label] = counts.get(label, 0) + 1
    print("make_image_folder: wrote %d images in %d classes to %s" % (sum(counts.values()), len(counts), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
