"""Synthetic PNGs: valid files of exactly the requested shape (the vision encoder compiles per shape)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from warmup.images import png, png_data_url


def chunks(data: bytes) -> dict[bytes, bytes]:
    """Parse PNG chunks, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        out[kind] = out.get(kind, b"") + body
        pos += 12 + length
    return out


@pytest.mark.parametrize(("height", "width"), [(896, 896), (448, 768), (1, 1)])
def test_png_has_the_requested_shape(height: int, width: int) -> None:
    parts = chunks(png(height, width))
    w, h, depth, color = struct.unpack(">IIBB", parts[b"IHDR"][:10])
    assert (h, w, depth, color) == (height, width, 8, 2)
    assert len(zlib.decompress(parts[b"IDAT"])) == height * (1 + 3 * width)
    assert b"IEND" in parts


def test_data_url_round_trips() -> None:
    url = png_data_url(32, 48)
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png(32, 48)
