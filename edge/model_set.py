"""The models a device runs: the deciding bundle and the bundles compared with it on every field.

Loaded together from the configuration, and loaded again as a whole on reload: a set that does not load
is refused and the running one stays.
"""
from __future__ import annotations

from dataclasses import dataclass

from leukoscreen.edge.bundle import ModelBundle, load_bundle
from leukoscreen.edge.bundle_install import installed_bundle
from leukoscreen.edge.device_config import DeviceConfig
from leukoscreen.edge.screening import DEFAULT_BUNDLE, ScreeningModel


def trusted_bundle(path, config: DeviceConfig) -> ModelBundle:
    """The bundle, every file checked against its hash and its signature against the configured trusted keys
    (if any)."""
    bundle = load_bundle(path)
    if config.trusted_keys:
        from leukoscreen.edge.signing import check_signature
        check_signature(bundle, config.trusted_keys)
    return bundle


@dataclass(frozen=True)
class ModelSet:
    deciding: ScreeningModel
    compared: tuple[ScreeningModel, ...] = ()

    @classmethod
    def load(cls, config: DeviceConfig) -> "ModelSet":
        """The configured bundle, else the current installed one (`leukoscreen bundle install`), else the shipped
        default; and the compared bundles. Raises BundleError or RuntimeProblem (both ValueError) naming the
        bundle that does not load."""
        options = config.runtime_options
        deciding_path = config.bundle or installed_bundle(config.state_dir) or DEFAULT_BUNDLE
        deciding = ScreeningModel.open(trusted_bundle(deciding_path, config), options)
        compared = tuple(ScreeningModel.open(trusted_bundle(path, config), options.with_format(None))
                         for path in config.compare_bundles)
        return cls(deciding, compared)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(note for model in (self.deciding, *self.compared) for note in model.notes)

    def describe(self) -> dict:
        """What the audit log records of a loaded set."""
        return {"bundle": self.deciding.title, "sha256": self.deciding.sha256,
                "compared": [model.title for model in self.compared]}
