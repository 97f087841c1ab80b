"""The host's view of a bundle the coordinator serves, and where each device keeps it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from galaxy.runtime import auth, bundle


@dataclass(frozen=True)
class HostBundle:
    """A bundle directory on this machine: its plan, plan sha and the inputs it takes."""

    path: Path
    plan: dict
    sha: str
    example_inputs: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str | Path) -> "HostBundle":
        path = Path(path).resolve()
        plan = bundle.load_plan(path)
        return cls(path, plan, auth.plan_digest(path), bundle.load_tensors(path / bundle.EXAMPLE_INPUTS))

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.plan["plan"]["devices"])

    @property
    def stages(self) -> int:
        return len(self.plan["plan"]["stages"])

    def describe(self) -> str:
        return f"plan {self.sha[:12]} ({self.path.name}: {len(self.devices)} devices, {self.stages} stage(s))"


@dataclass(frozen=True)
class Placement:
    """Where each device is: the address its rank binds a store on when it is rank 0, and the
    folder under which its copies of bundles lie (None: the bundle's own path on this machine,
    for ranks that run here)."""

    addresses: Mapping[str, str]
    folders: Mapping[str, str] | None = field(default=None)

    def bundle_path(self, device: str, host_bundle: HostBundle) -> str:
        if self.folders is None:
            return str(host_bundle.path)
        from galaxy.host.hosts import deployed_path

        return deployed_path(self.folders[device], host_bundle.path, host_bundle.sha)
