"""Installing a bundle on a device (checked, then switched in one step) and rolling back to the previous one."""
import json
import os
import shutil
import zipfile

import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle_install import bundles_dir, install_bundle, installed_bundle, rollback
from leukoscreen.edge.device_config import parse_config
from leukoscreen.edge.manifest import BundleError
from leukoscreen.edge.model_set import ModelSet

from conftest import REPO, write_manifest_values

SHIPPED = REPO / "edge" / "default_bundle"


def _version(tmp_path, version: str, **changes):
    """A copy of the shipped bundle under another version (and other manifest values)."""
    folder = tmp_path / f"bundle-{version}"
    shutil.copytree(SHIPPED, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest_values(folder, manifest | {"version": version} | changes)
    return folder


@pytest.fixture
def config(tmp_path):
    return parse_config({"state_dir": str(tmp_path / "state")})


def test_install_switches_the_device_and_rollback_returns(tmp_path, config):
    assert installed_bundle(config.state_dir) is None
    assert ModelSet.load(config).deciding.title.startswith("leukoscreen-default 7")  # nothing installed: shipped
    first = install_bundle(_version(tmp_path, "7"), config)
    assert installed_bundle(config.state_dir) == first and ModelSet.load(config).deciding.title.endswith(" 7")
    second = install_bundle(_version(tmp_path, "8"), config)
    links = bundles_dir(config.state_dir)
    assert os.readlink(links / "current") == second.name and os.readlink(links / "previous") == first.name
    assert ModelSet.load(config).deciding.title.endswith(" 8")
    assert rollback(config) == first
    assert ModelSet.load(config).deciding.title.endswith(" 7")
    assert os.readlink(links / "previous") == second.name   # and forward again
    assert rollback(config) == second
    assert sorted(p.name for p in links.iterdir() if not p.name.startswith(".")) == sorted(
        [first.name, second.name, "current", "previous"])


def test_a_bundle_that_fails_a_check_is_removed_and_nothing_changes(tmp_path, config):
    installed = install_bundle(_version(tmp_path, "7"), config)
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    wrong = {fmt: entry | {"self_test_outputs": [[1.0, 0.0, 0.0, 0.0]] * 6} for fmt, entry in manifest["files"].items()}
    with pytest.raises(BundleError, match="no model format of this bundle can be used here"):
        install_bundle(_version(tmp_path, "9", files=wrong), config)   # its files compute other answers
    broken = _version(tmp_path, "10")
    (broken / "model-int8.tflite").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="does not match its sha256") as refusal:
        install_bundle(broken, config)
    assert str(broken) in str(refusal.value) and ".incoming-" not in str(refusal.value)  # what the user gave
    with pytest.raises(BundleError, match="no such bundle folder or zip"):
        install_bundle(tmp_path / "nowhere", config)
    assert installed_bundle(config.state_dir) == installed
    assert not list(bundles_dir(config.state_dir).glob(".incoming-*"))
    with pytest.raises(BundleError, match="no previous installed bundle"):
        rollback(config)


def test_zips_are_unpacked_safely(tmp_path, config):
    folder = _version(tmp_path, "7")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:   # the bundle inside one folder, as `zip -r` makes it
        for item in folder.iterdir():
            archive.write(item, f"bundle-7/{item.name}")
    assert install_bundle(good, config).name.startswith("leukoscreen-default-7-")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="points outside the bundle"):
        install_bundle(evil, config)
    deep = tmp_path / "deep.zip"
    with zipfile.ZipFile(deep, "w") as archive:
        archive.writestr("a/" * 2000 + "x", "x")
    with pytest.raises(BundleError, match="2001 folders deep"):
        install_bundle(deep, config)
    clash = tmp_path / "clash.zip"
    with zipfile.ZipFile(clash, "w") as archive:   # a file and a folder of one name
        archive.writestr("a", "x")
        archive.writestr("a/b", "x")
    with pytest.raises(BundleError, match="cannot be unpacked as a bundle") as refusal:
        install_bundle(clash, config)
    assert ".incoming-" not in str(refusal.value)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(BundleError, match="not a readable zip file"):
        install_bundle(tmp_path / "not.zip", config)
    assert not (tmp_path / "outside.txt").exists() and not (bundles_dir(config.state_dir).parent / "outside.txt").exists()


def test_with_trusted_keys_only_signed_bundles_install(tmp_path, config):
    from leukoscreen.edge.signing import keygen, sign_bundle
    private, public = keygen(tmp_path / "keys")
    keyed = parse_config({"state_dir": config.state_dir, "trusted_keys": [public.read_text().strip()]})
    unsigned = _version(tmp_path, "7")
    with pytest.raises(BundleError, match="not signed"):
        install_bundle(unsigned, keyed)
    sign_bundle(unsigned, private)
    assert install_bundle(unsigned, keyed).name.startswith("leukoscreen-default-7-")


def test_cli_install_and_rollback_then_a_daemon_reload_runs_it(tmp_path, capsys):
    from leukoscreen.edge.daemon import Daemon
    state = tmp_path / "state"
    daemon = Daemon(parse_config({"state_dir": str(state), "display": {"kind": "none"}}))
    try:
        assert main(["bundle", "install", str(_version(tmp_path, "7")), "--state-dir", str(state)]) == 0
        out = capsys.readouterr().out
        assert "current bundle:" in out and "systemctl reload leukoscreen" in out
        assert daemon.reload() and daemon.models.deciding.title.endswith(" 7")
        assert main(["bundle", "install", str(_version(tmp_path, "8")), "--state-dir", str(state)]) == 0
        assert main(["bundle", "rollback", "--state-dir", str(state)]) == 0
        assert daemon.reload() and daemon.models.deciding.title.endswith(" 7")
    finally:
        daemon.close()
    assert main(["bundle", "install", str(tmp_path / "nowhere"), "--state-dir", str(state)]) == 2
    assert "no such bundle folder or zip" in capsys.readouterr().err


def _zip(folder, target):
    with zipfile.ZipFile(target, "w") as archive:
        for item in folder.iterdir():
            archive.write(item, item.name)
    return target.read_bytes()


def test_the_api_installs_a_zip_and_the_device_runs_it(token_device, tmp_path):
    auth = {"Authorization": "Bearer open-sesame-42"}
    body = _zip(_version(tmp_path, "7"), tmp_path / "b7.zip")
    zipped = {"content-type": "application/zip"}
    assert token_device.client.post("/api/bundle", content=body, headers=zipped).status_code == 401
    answer = token_device.client.post("/api/bundle", content=body, headers=auth | zipped)
    assert answer.status_code == 200, answer.text
    assert answer.json()["running"].endswith(" 7") and "installed and running" in answer.json()["message"]
    assert token_device.client.get("/api/status", headers=auth).json()["bundle"]["version"] == "7"
    broken = _version(tmp_path, "8")
    (broken / "model-int8.onnx").write_bytes(b"changed")
    refused = token_device.client.post("/api/bundle", content=_zip(broken, tmp_path / "b8.zip"), headers=auth | zipped)
    assert refused.status_code == 422 and "nothing changed" in refused.json()["detail"]
    assert "the uploaded bundle" in refused.json()["detail"] and ".upload-" not in refused.json()["detail"]
    assert ".incoming-" not in refused.json()["detail"]
    assert token_device.daemon.models.deciding.title.endswith(" 7")
    assert token_device.client.post("/api/bundle", content=b"PK", headers=auth | {"content-type": "text/plain"}
                                    ).status_code == 415
    assert not list(bundles_dir(token_device.daemon.config.state_dir).glob(".upload-*"))


def test_a_device_without_an_access_token_installs_no_bundle_over_the_api(device, tmp_path):
    answer = device.client.post("/api/bundle", content=_zip(_version(tmp_path, "7"), tmp_path / "b.zip"),
                                headers={"content-type": "application/zip"})
    assert answer.status_code == 403 and "needs the device's access token" in answer.json()["detail"]
    assert installed_bundle(device.daemon.config.state_dir) is None


def test_the_folder_stays_inside_the_state_folder_and_links_are_refused(tmp_path, config):
    escaping = _version(tmp_path, "../../../escape")
    installed = install_bundle(escaping, config)
    assert installed.parent == bundles_dir(config.state_dir) and "/" not in installed.name
    linked = _version(tmp_path, "9")
    (linked / "manifest.sig").symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="is a link or a special file"):
        install_bundle(linked, config)


def test_rollback_checks_the_signature_the_device_wants(tmp_path, config):
    from leukoscreen.edge.signing import keygen, sign_bundle
    private, public = keygen(tmp_path / "keys")
    install_bundle(_version(tmp_path, "7"), config)   # unsigned, on a device without keys then
    signed = _version(tmp_path, "8")
    sign_bundle(signed, private)
    keyed = parse_config({"state_dir": config.state_dir, "trusted_keys": [public.read_text().strip()]})
    install_bundle(signed, keyed)
    with pytest.raises(BundleError, match="not signed"):
        rollback(keyed)
    assert ModelSet.load(keyed).deciding.title.endswith(" 8")
