"""Signed bundles: who released a model, checked before the device loads it.

A bundle's manifest already hashes every file of the bundle (the device checks them on load), and the manifest
digest (`manifest_sha256`) hashes every value of the manifest. Signing the digest of the manifest as loaded with Ed25519 therefore signs the
whole bundle. The signature travels in the bundle as `manifest.sig` (JSON: the signer's public key, the digest
and the signature). A device whose configuration lists `trusted_keys` loads only bundles signed by one of
them; without keys it loads any valid bundle, as before.

Keys are written as text: the private key as PKCS#8 PEM (file mode 0600), the public key as one line
`ed25519:BASE64` (the raw 32 bytes), which is also how `trusted_keys` lists it.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path

from leukoscreen.edge.manifest import BundleError

SIGNATURE_FILE = "manifest.sig"
PREFIX = "ed25519:"
MESSAGE = "leukoscreen bundle manifest sha256 {}"
MAX_SIGNATURE_BYTES = 4096
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SigningError(ValueError):
    """A key or signature that cannot be used; the message says what to do."""


def parse_public_key(text: str) -> bytes:
    """The raw 32 bytes of an `ed25519:BASE64` public key; SigningError otherwise (the rejected text is never
    repeated: it may be a private key pasted by mistake)."""
    text = text.strip() if isinstance(text, str) else ""
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True) if text.startswith(PREFIX) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise SigningError(f"a trusted key ({len(text)} characters) is not a public key: use the line `leukoscreen "
                           f"keygen` wrote into the .pub file ({PREFIX} followed by 44 base64 characters), never "
                           "the .pem file (the private key)")
    return raw


def _public_text(raw: bytes) -> str:
    return PREFIX + base64.b64encode(raw).decode()


def keygen(out: Path, name: str = "leukoscreen-signing") -> tuple[Path, Path]:
    """A new Ed25519 key pair in `out`: NAME.pem (private, mode 0600) and NAME.pub. Existing files are kept
    and refused: a lost or overwritten private key cannot sign for the devices that trust it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if not re.fullmatch(KEY_NAME, name):
        raise SigningError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (up to 64), no folders")
    if (out / "manifest.json").exists():
        raise SigningError(f"{out} is a bundle: keep private keys out of bundles; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    private_file, public_file = out / f"{name}.pem", out / f"{name}.pub"
    for existing in (private_file, public_file):
        if existing.exists():
            raise SigningError(f"{existing} exists: keep it (devices trust its public key) or move it away first")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    descriptor = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # ours from here on
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        public_file.write_text(_public_text(raw) + "\n")
    except OSError:   # a half-written pair (a full disk) is worth nothing: no device can trust it
        private_file.unlink(missing_ok=True)
        public_file.unlink(missing_ok=True)
        raise
    return private_file, public_file


def _private_key(key_file: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except OSError as error:
        raise SigningError(f"{key_file}: cannot be read ({error.strerror})") from error
    except (ValueError, TypeError) as error:
        raise SigningError(f"{key_file}: not an unencrypted PEM private key ({error}); use the .pem file "
                           "`leukoscreen keygen` wrote") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{key_file}: a {type(key).__name__}, not an Ed25519 key; make one with `leukoscreen keygen`")
    return key


def sign_bundle(bundle_path: Path, key_file: Path) -> Path:
    """Write BUNDLE/manifest.sig: the Ed25519 signature of the bundle's manifest digest (the bundle is loaded
    and checked first: every file against its hash)."""
    from cryptography.hazmat.primitives import serialization

    from leukoscreen.edge.bundle import load_bundle
    bundle = load_bundle(bundle_path)
    digest = bundle.manifest_digest
    key = _private_key(key_file)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(MESSAGE.format(digest).encode())
    target = bundle.path / SIGNATURE_FILE
    temporary = target.with_name(SIGNATURE_FILE + ".tmp")
    temporary.write_text(json.dumps({"algorithm": "ed25519", "public_key": _public_text(raw),
                                     "manifest_sha256": digest,
                                     "signature": base64.b64encode(signature).decode()}, indent=2) + "\n")
    os.replace(temporary, target)
    return target


def check_signature(bundle, trusted_keys: tuple[str, ...]) -> str:
    """The trusted key (`ed25519:...`) that signed this loaded bundle; BundleError saying why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    where = bundle.path / SIGNATURE_FILE
    if not where.exists() and not where.is_symlink():
        raise BundleError(f"{bundle.path}: not signed (no {SIGNATURE_FILE}) and this device only loads bundles "
                          "signed by its trusted_keys: sign a bundle with `leukoscreen sign` and install it with "
                          "`leukoscreen bundle install` (or POST /api/bundle)")
    try:
        if where.is_symlink() or not where.is_file() or where.stat().st_size > MAX_SIGNATURE_BYTES:
            raise ValueError(f"not a regular file of at most {MAX_SIGNATURE_BYTES} bytes")
        values = json.loads(where.read_text(encoding="utf-8"))
        signer, signature = values["public_key"], base64.b64decode(values["signature"], validate=True)
        if not isinstance(signer, str):
            raise ValueError("public_key is not text")
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, RecursionError) as error:
        raise BundleError(f"{where}: not a readable signature ({error}); sign the bundle again") from None
    trusted = {parse_public_key(key): key for key in trusted_keys}
    try:
        raw = parse_public_key(signer)
    except SigningError:
        raise BundleError(f"{where}: names no valid public key; sign the bundle again") from None
    if raw not in trusted:
        raise BundleError(f"{bundle.path}: signed by {signer}, which is not in this device's trusted_keys")
    digest = bundle.manifest_digest
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, MESSAGE.format(digest).encode())
    except InvalidSignature:
        raise BundleError(f"{bundle.path}: its signature does not match its manifest (changed after it was "
                          "signed, or signed for another bundle); sign it again or install the released bundle") from None
    return trusted[raw]
