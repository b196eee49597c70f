"""Content fingerprints of image files: sha256, perceptual hash, size and mode, readability.

Used by the data audit and by the splitter (exact and near duplicates are kept in one group).
Results are cached per file (keyed by path, size and modification time) so a re-run is fast.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from leukoscreen.edge.image_io import ImageReadError, decode_image


@dataclass(frozen=True)
class FileInfo:
    path: str
    sha256: str
    phash: str | None       # 64-bit perceptual hash as 16 hex digits; None when unreadable
    width: int | None
    height: int | None
    mode: str | None        # PIL mode of the file: "RGB", "L", "RGBA", "I;16", ...
    error: str | None       # why the image cannot be used, or None


def fingerprint_file(path: Path) -> FileInfo:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as header:
            mode = header.mode
    except Exception:  # PIL cannot even read the header; decode_image below gives the message
        mode = None
    try:
        rgb = decode_image(data, str(path))
    except ImageReadError as error:
        return FileInfo(str(path), digest, None, None, None, mode, str(error))
    phash = str(imagehash.phash(Image.fromarray(rgb)))
    return FileInfo(str(path), digest, phash, rgb.shape[1], rgb.shape[0], mode, None)


def fingerprint_files(paths: list[Path], cache_dir: Path | None = None) -> list[FileInfo]:
    """Fingerprints of the files, in order; unreadable files come back with `error` set."""
    cache_file = cache_dir / "fingerprints.json" if cache_dir else None
    cache: dict = {}
    if cache_file and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}

    def key(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def one(path: Path) -> FileInfo:
        cached = cache.get(key(path))
        return FileInfo(**cached) if cached else fingerprint_file(path)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        infos = list(pool.map(one, paths))
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fresh = {key(Path(info.path)): asdict(info) for info in infos}
        temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")  # commands may run side by side
        temporary.write_text(json.dumps(fresh))
        os.replace(temporary, cache_file)
    return infos


def near_duplicate_pairs(phashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) with i < j whose perceptual hashes differ in at most max_distance bits."""
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), 1024):
        block = values[start:start + 1024]
        distance = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        for i, j in zip(rows + start, cols):
            if i < j:
                pairs.append((int(i), int(j), int(distance[i - start, j])))
    return pairs
