"""Synthetic images of an exact size, encoded as PNG with the standard library only.

The warm-up image must not pull Pillow: the vision encoder compiles per *shape*, so any pixels
will do, and a smooth gradient compresses to a few kilobytes even at 896x896.
"""

from __future__ import annotations

import base64
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(height: int, width: int) -> bytes:
    """An RGB gradient PNG of ``height`` x ``width`` pixels."""
    row = bytearray(width * 3)
    row[0::3] = bytes((x * 255) // max(1, width - 1) for x in range(width))
    row[2::3] = b"\x80" * width
    rows = []
    for y in range(height):
        row[1::3] = bytes([(y * 255) // max(1, height - 1)]) * width
        rows.append(b"\x00" + bytes(row))  # filter type 0 per scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _chunk(b"IEND", b"")
    )


def png_data_url(height: int, width: int) -> str:
    """The image as an OpenAI ``image_url`` data URL."""
    return "data:image/png;base64," + base64.b64encode(png(height, width)).decode("ascii")
