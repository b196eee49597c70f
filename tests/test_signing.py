"""Signed bundles: keygen, sign, and a device with trusted_keys that loads only bundles signed by them."""
import json
import shutil
import stat

import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.device_config import ConfigError, parse_config
from leukoscreen.edge.manifest import BundleError
from leukoscreen.edge.model_set import ModelSet
from leukoscreen.edge.signing import SIGNATURE_FILE, SigningError, check_signature, keygen, sign_bundle

from conftest import REPO, write_manifest_values


@pytest.fixture
def released(tmp_path):
    """A copy of the shipped bundle signed with a new key; the key pair's files."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "edge" / "default_bundle", bundle)
    private, public = keygen(tmp_path / "keys")
    sign_bundle(bundle, private)
    return bundle, private, public.read_text().strip()


def _config(tmp_path, bundle, keys):
    return parse_config({"bundle": str(bundle), "trusted_keys": list(keys), "state_dir": str(tmp_path / "state")})


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    private, public = keygen(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("ed25519:") and len(public.read_text().strip()) == 8 + 44
    with pytest.raises(SigningError, match="exists: keep it"):
        keygen(tmp_path)


def test_a_signed_bundle_loads_on_a_device_that_trusts_its_key(released, tmp_path):
    bundle, _, public = released
    assert check_signature(load_bundle(bundle), (public,)) == public
    models = ModelSet.load(_config(tmp_path, bundle, [public]))
    assert models.deciding.title.startswith("leukoscreen-default")
    signature = json.loads((bundle / SIGNATURE_FILE).read_text())
    assert signature["manifest_sha256"] == json.loads((bundle / "manifest.json").read_text())["manifest_sha256"]


def test_unsigned_wrongly_signed_and_changed_bundles_are_refused_with_the_reason(released, tmp_path):
    bundle, private, public = released
    _, other_public = keygen(tmp_path / "other")
    with pytest.raises(BundleError, match="which is not in this device's trusted_keys"):
        ModelSet.load(_config(tmp_path, bundle, [other_public.read_text().strip()]))
    with pytest.raises(BundleError, match=r"not signed \(no manifest.sig\)"):
        ModelSet.load(_config(tmp_path, REPO / "edge" / "default_bundle", [public]))
    # changed after signing, and its manifest digest made again so that the bundle itself is valid
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_manifest_values(bundle, manifest | {"decision": manifest["decision"] | {"threshold": 0.5}})
    load_bundle(bundle)  # a valid bundle ...
    with pytest.raises(BundleError, match="its signature does not match its manifest"):
        ModelSet.load(_config(tmp_path, bundle, [public]))  # ... but not the one that was signed
    (bundle / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not a readable signature"):
        ModelSet.load(_config(tmp_path, bundle, [public]))
    # without trusted keys any valid bundle loads, as before
    assert ModelSet.load(_config(tmp_path, bundle, []))


def test_keys_in_the_config_and_on_the_command_line_are_checked(tmp_path, capsys, released):
    bundle, private, public = released
    with pytest.raises(ConfigError, match="is not a public key"):
        _config(tmp_path, bundle, ["ed25519:short"])
    (tmp_path / "not-a-key.pem").write_text("hello")
    assert main(["sign", str(bundle), "--key", str(tmp_path / "not-a-key.pem")]) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path / "cli")]) == 0
    assert 'trusted_keys = ["ed25519:' in capsys.readouterr().out
    assert main(["sign", str(bundle), "--key", str(tmp_path / "cli" / "leukoscreen-signing.pem")]) == 0
    new_public = (tmp_path / "cli" / "leukoscreen-signing.pub").read_text().strip()
    assert check_signature(load_bundle(bundle), (new_public,)) == new_public


def test_a_reload_to_an_unsigned_bundle_is_refused_and_the_signed_one_keeps_running(released, tmp_path):
    from leukoscreen.edge.daemon import Daemon
    bundle, _, public = released
    config = parse_config({"bundle": str(bundle), "trusted_keys": [public], "state_dir": str(tmp_path / "state"),
                           "camera": {"kind": "synthetic"}, "display": {"kind": "none"}})
    daemon = Daemon(config)
    try:
        (bundle / SIGNATURE_FILE).unlink()
        assert daemon.reload() is False
        assert "Model reload refused" in daemon.status.message and "not signed" in daemon.status.message
        assert daemon.models.deciding.title.startswith("leukoscreen-default")
    finally:
        daemon.close()


def test_bundle_check_names_the_signature_and_a_rewritten_manifest_drops_a_stale_one(released, tmp_path, capsys):
    bundle, _, public = released
    assert main(["bundle", "check", str(bundle)]) == 0
    assert f"signature: by {public}, matches the manifest" in capsys.readouterr().out
    signature = json.loads((bundle / SIGNATURE_FILE).read_text())
    (bundle / SIGNATURE_FILE).write_text(json.dumps(signature | {"manifest_sha256": "0" * 64, "signature": "AAAA"}))
    assert main(["bundle", "check", str(bundle)]) == 2
    assert "signature: refused:" in capsys.readouterr().out
    sign_bundle(bundle, released[1])
    from leukoscreen.edge.bundle import write_manifest
    manifest = load_bundle(bundle).manifest
    assert write_manifest(bundle, manifest) is False and (bundle / SIGNATURE_FILE).exists()  # unchanged: kept
    assert write_manifest(bundle, manifest.model_copy(update={"version": "6.2"})) is True  # changed: removed
    assert not (bundle / SIGNATURE_FILE).exists()


def test_a_refusal_repeated_at_every_reload_is_shown_once(released, tmp_path):
    from leukoscreen.edge.daemon import Daemon
    bundle, _, public = released
    daemon = Daemon(parse_config({"bundle": str(bundle), "trusted_keys": [public], "state_dir": str(tmp_path / "s"),
                                  "display": {"kind": "none"}}))
    try:
        (bundle / SIGNATURE_FILE).unlink()
        for _ in range(3):
            assert daemon.reload() is False
        assert daemon.status.message.count("Model reload refused") == 1
    finally:
        daemon.close()


def test_hostile_signature_files_and_keys_give_messages(released, tmp_path):
    bundle, private, public = released
    for content in ('{"public_key": 5, "signature": "AAAA"}', "[" * 100000, "x" * 10000):
        (bundle / SIGNATURE_FILE).write_text(content)
        with pytest.raises(BundleError, match="not a readable signature"):
            check_signature(load_bundle(bundle), (public,))
    (bundle / SIGNATURE_FILE).unlink()
    (bundle / SIGNATURE_FILE).symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="not a regular file"):
        check_signature(load_bundle(bundle), (public,))
    pasted = private.read_text().splitlines()[1]   # the private key's base64 line, pasted by mistake
    with pytest.raises(ConfigError) as refused:
        _config(tmp_path, bundle, [pasted])
    assert pasted[:12] not in str(refused.value) and "never the .pem file" in str(refused.value)
    with pytest.raises(SigningError, match="no folders"):
        keygen(tmp_path / "k", name="../evil")
    with pytest.raises(SigningError, match="is a bundle"):
        keygen(bundle)


def test_a_manifest_that_cannot_be_written_keeps_the_signature_of_the_one_that_stays(released, monkeypatch):
    """A full disk while a command rewrites the manifest (`bundle scale`, `bundle guard`): the old manifest and its
    signature stay valid, and no half-written file is left."""
    import errno
    from pathlib import Path

    from leukoscreen.edge.bundle import write_manifest
    bundle, _, public = released
    before = (bundle / "manifest.json").read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        write_manifest(bundle, load_bundle(bundle).manifest.model_copy(update={"version": "6.2"}))
    monkeypatch.undo()
    assert (bundle / "manifest.json").read_bytes() == before and (bundle / SIGNATURE_FILE).exists()
    assert not (bundle / "manifest.json.new").exists()
    assert check_signature(load_bundle(bundle), (public,)) == public

