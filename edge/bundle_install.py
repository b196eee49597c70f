"""Installing a new model bundle on a device, and going back to the previous one.

`leukoscreen bundle install SOURCE` takes a bundle folder or a zip of one. The bundle is copied into the
device's state folder (`STATE/bundles/NAME-VERSION-DIGEST/`), checked there as the device will load it (every
file against its hash, the signature against `trusted_keys` when the config lists any, the self-test through
this device's runtime), and only then made current by replacing the `current` link in one step; the bundle it
replaces stays, named by the `previous` link, and `leukoscreen bundle rollback` swaps the two back. A bundle
that fails a check is removed again and nothing changes. A device whose config names no `bundle` runs the
current installed bundle (the shipped default when none is installed); a running daemon loads it on
`systemctl reload leukoscreen` (SIGHUP).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from leukoscreen.edge.manifest import BundleError

MAX_UNPACKED_BYTES = 1 << 30   # a zip that unpacks to more than 1 GiB is refused (AlexNet's bundle: ~300 MB)
MAX_DEPTH = 8                  # folders inside a bundle (it has none; a zip may wrap it in one)


def bundles_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "bundles"


def installed_bundle(state_dir: str | Path) -> Path | None:
    """The current installed bundle's folder, or None when none was installed."""
    current = bundles_dir(state_dir) / "current"
    return current.resolve() if current.is_dir() else None


def _unpack(archive: Path, target: Path) -> None:
    """Extract a bundle zip, refusing paths outside the folder, links and archives that unpack too large. The
    bundle may sit at the top of the zip or in one folder."""
    try:
        with zipfile.ZipFile(archive) as bundle_zip:
            entries = bundle_zip.infolist()
            if sum(entry.file_size for entry in entries) > MAX_UNPACKED_BYTES:
                raise BundleError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES >> 20} MB; not a bundle")
            for entry in entries:
                parts = Path(entry.filename).parts
                if entry.filename.startswith("/") or ".." in parts or (entry.external_attr >> 28) == 0o12:
                    raise BundleError(f"{archive}: the entry {entry.filename[:200]!r} points outside the bundle; "
                                      "zip the bundle folder itself")
                if len(parts) > MAX_DEPTH:
                    raise BundleError(f"{archive}: the entry {entry.filename[:200]!r} is {len(parts)} folders deep; "
                                      "zip the bundle folder itself")
            bundle_zip.extractall(target)
        inner = [p for p in target.iterdir()]
        if not (target / "manifest.json").exists() and len(inner) == 1 and inner[0].is_dir():
            for item in inner[0].iterdir():
                item.rename(target / item.name)
            inner[0].rmdir()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as error:
        raise BundleError(f"{archive}: not a readable zip file ({error})") from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk, said as such by the caller
        raise BundleError(f"{archive}: cannot be unpacked as a bundle ({error.strerror}); zip the bundle folder "
                          "itself") from error


def _switch(folder: Path, link: str, target_name: str) -> None:
    """Point folder/link at target_name in one step (a new link renamed over the old one)."""
    temporary = folder / f".{link}.new"
    temporary.unlink(missing_ok=True)
    os.symlink(target_name, temporary)
    os.replace(temporary, folder / link)


def install_bundle(source: str | Path, config, name: str = "") -> Path:
    """Install a bundle folder or zip for a device with this DeviceConfig; returns the installed folder.
    Raises BundleError (or RuntimeProblem, SigningError: all ValueError) saying why nothing was installed, naming
    the source as `name` (default: its path), not the folder it was checked in."""
    from leukoscreen.edge.model_set import trusted_bundle
    from leukoscreen.edge.screening import ScreeningModel
    source = Path(source)
    if not source.exists():
        raise BundleError(f"{source}: no such bundle folder or zip")
    folder = bundles_dir(config.state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
    try:
        if source.is_dir():
            links = [p.name for p in source.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())]
            if links:
                raise BundleError(f"{source}: {links[0]} is a link or a special file; a bundle holds plain files only")
            shutil.copytree(source, incoming, dirs_exist_ok=True)
        else:
            _unpack(source, incoming)
        bundle = trusted_bundle(incoming, config)   # hashes and signature, then the self-test: as the device
        ScreeningModel.open(bundle, config.runtime_options)  # loads it
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{bundle.manifest.name}-{bundle.manifest.version}").strip("._")
        name = f"{label[:80]}-{bundle.manifest_digest[:12]}"   # inside the folder, whatever the manifest says
        target = folder / name
        if target.exists():   # the same bundle again: the copy already there was checked when it came
            shutil.rmtree(incoming)
        else:
            os.replace(incoming, target)
    except ValueError as error:
        shutil.rmtree(incoming, ignore_errors=True)
        said = str(error).replace(str(incoming), name or str(source)).replace(str(source), name or str(source))
        raise BundleError(said) from error
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    current = folder / "current"
    if current.is_symlink() and os.readlink(current) != name:
        _switch(folder, "previous", os.readlink(current))
    _switch(folder, "current", name)
    return target


def rollback(config) -> Path:
    """Make the previous installed bundle current again (and the current one previous), after checking it as
    the device will load it with this DeviceConfig (hashes, signature)."""
    from leukoscreen.edge.model_set import trusted_bundle
    folder = bundles_dir(config.state_dir)
    current, previous = folder / "current", folder / "previous"
    if not previous.is_symlink() or not previous.is_dir():
        raise BundleError(f"{folder}: there is no previous installed bundle to go back to")
    before, after = os.readlink(current), os.readlink(previous)
    trusted_bundle(folder / after, config)   # still whole, and signed when the device wants it
    _switch(folder, "current", after)
    _switch(folder, "previous", before)
    return folder / after
