"""Resealing a container after a test has changed its bytes: every section CRC-32 that fits, the
header CRC-32 and the SHA-256 trailer recomputed, so that only the deeper checks can object."""

import hashlib
import struct
import zlib

from compressor.container import format as fmt


def reseal(buf: bytearray) -> bytes:
    """Recompute every section CRC32 that fits, the header CRC32 and the SHA-256."""
    if len(buf) < fmt.HEADER_BYTES + fmt.TRAILER_BYTES:
        return bytes(buf)
    count = struct.unpack_from("<I", buf, 24)[0]
    table_end = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * count
    if count < 100_000 and table_end + fmt.TRAILER_BYTES <= len(buf):
        for i in range(count):
            entry = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * i
            offset, stored = struct.unpack_from("<QQ", buf, entry + 8)
            if offset + stored <= len(buf) - fmt.TRAILER_BYTES:
                struct.pack_into("<I", buf, entry + 4, zlib.crc32(bytes(buf[offset : offset + stored])))
        crc = zlib.crc32(bytes(buf[fmt.HEADER_BYTES : table_end]), zlib.crc32(bytes(buf[:28])))
        struct.pack_into("<I", buf, 28, crc)
    buf[-32:] = hashlib.sha256(bytes(buf[:-32])).digest()
    return bytes(buf)
