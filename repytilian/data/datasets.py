"""Named data sets: where to find them on this machine, or how to fetch and verify them.

Lookup order for a named data set: the cache (`$REPYTILIAN_HOME`, default `~/.cache/repytilian`),
then a local mirror directory (`$REPYTILIAN_DATA`), then a download whose sha256 is checked before
the file is kept. Every copy found is checked against the same sha256.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import RepytilianError
from ..runtime.fileio import atomic_write_bytes
from ..runtime.paths import cache_dir


@dataclass(frozen=True)
class NamedDataset:
    name: str
    filename: str
    url: str
    sha256: str
    size: int


DATASETS: dict[str, NamedDataset] = {
    "shakespeare": NamedDataset(
        name="shakespeare",
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_verified(path: Path, ds: NamedDataset) -> bytes | None:
    """The file's bytes if it exists and matches the checksum; None if absent; an error if corrupt."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if _sha256(data) != ds.sha256:
        raise RepytilianError(
            f"{path} does not match the sha256 of the {ds.name} data set; delete it "
            f"(or replace it with the file from {ds.url}) and try again"
        )
    return data


def download(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        return response.read()


def dataset_path(name: str) -> Path:
    """Path of a verified local copy of the named data set, downloading it into the cache if needed."""
    try:
        ds = DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise RepytilianError(f"unknown data set {name!r}; known: {known} (or give a file as `data_file`, a folder as "
                              "`data_path`)", ("data_file", "data_path")) from None

    cached = cache_dir() / "datasets" / ds.filename
    if _read_verified(cached, ds) is not None:
        return cached
    mirror = os.environ.get("REPYTILIAN_DATA")
    if mirror and _read_verified(Path(mirror) / ds.filename, ds) is not None:
        return Path(mirror) / ds.filename

    try:
        if os.environ.get("REPYTILIAN_OFFLINE"):
            raise urllib.error.URLError("REPYTILIAN_OFFLINE is set")
        data = download(ds.url)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RepytilianError(
            f"the {ds.name} data set is not on this machine and could not be downloaded ({e}).\n"
            f"Provide it in one of these ways:\n"
            f"  - save {ds.url} as {cached}\n"
            f"  - or set REPYTILIAN_DATA to a folder that holds {ds.filename}\n"
            f"  - or train on your own text: `data_file` FILE or `data_path` FOLDER", ("data_file", "data_path")
        ) from None
    if _sha256(data) != ds.sha256:
        raise RepytilianError(
            f"the download of {ds.url} does not match the expected sha256 "
            f"({_sha256(data)[:12]}... instead of {ds.sha256[:12]}...); nothing was saved"
        )
    atomic_write_bytes(cached, data)
    return cached
