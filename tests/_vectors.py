"""Reading the ``.hex`` test vectors under conformance/vectors/.

A vector file holds lines ``OFFSET  HEX BYTES ...  # comment``, whole-line
``#`` comments, and one ``# expect: {JSON}`` line with the decoded meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_vector(directory: Path, name: str) -> tuple[bytes, dict[str, Any]]:
    """Return the bytes of ``directory/name.hex`` and the JSON of its ``# expect:`` line.

    Fails (AssertionError) when a line's offset column is not the number of
    bytes before it.
    """
    expect: dict[str, Any] = {}
    data = bytearray()
    for line in (directory / f"{name}.hex").read_text().splitlines():
        if line.startswith("# expect:"):
            expect = json.loads(line[len("# expect:") :])
            continue
        if line.startswith("#") or not line.strip():
            continue
        code = line.split("#", 1)[0].split()
        offset = len(data)
        assert int(code[0], 16) == offset, f"{name}: offset column {code[0]} is not {offset:x}"
        data += bytes(int(pair, 16) for pair in code[1:])
    return bytes(data), expect
