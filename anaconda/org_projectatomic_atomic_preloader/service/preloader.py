"""The add-on's kickstart service: keeps what the section said, asks for the
atomic-preload package in the installed system, and stages at the end of the
installation."""

from __future__ import annotations

import copy
import logging
from typing import List

from pyanaconda.core.configuration.anaconda import conf
from pyanaconda.modules.common.base import KickstartService
from pyanaconda.modules.common.structures.requirement import Requirement

from org_projectatomic_atomic_preloader.kickstart import (
    ADDON_NAME,
    Preload,
    PreloadKickstartSpecification,
)
from org_projectatomic_atomic_preloader.service.installation import StageTask

log = logging.getLogger(__name__)


class Preloader(KickstartService):
    """The AtomicPreload service."""

    def __init__(self) -> None:
        super().__init__()
        self.preload = Preload()

    def publish(self) -> None:
        # Imported here: D-Bus (dasbus) is needed to publish, not to read a kickstart.
        # pylint: disable=import-outside-toplevel
        from pyanaconda.core.dbus import DBus
        from pyanaconda.modules.common.containers import TaskContainer

        from org_projectatomic_atomic_preloader.constants import ATOMIC_PRELOAD
        from org_projectatomic_atomic_preloader.service.interface import PreloaderInterface

        TaskContainer.set_namespace(ATOMIC_PRELOAD.namespace)
        DBus.publish_object(ATOMIC_PRELOAD.object_path, PreloaderInterface(self))
        DBus.register_service(ATOMIC_PRELOAD.service_name)

    @property
    def kickstart_specification(self):
        return PreloadKickstartSpecification

    def process_kickstart(self, data) -> None:
        self.preload = copy.deepcopy(getattr(data.addons, ADDON_NAME).preload)
        log.debug("atomic-preload: %s", self.preload)

    def setup_kickstart(self, data) -> None:
        getattr(data.addons, ADDON_NAME).preload = copy.deepcopy(self.preload)

    def collect_requirements(self) -> List[Requirement]:
        """The installed system needs atomic-preload: its generator loads the archives
        at first boot."""
        if self.preload.is_empty():
            return []
        return [Requirement.for_package(
            "atomic-preload",
            reason="Loads the containers the kickstart preloads (%addon "
                   f"{ADDON_NAME}).")]

    def install_with_tasks(self) -> List[StageTask]:
        """One task: stage everything into the installed system, all or nothing."""
        if self.preload.is_empty():
            return []
        return [StageTask(conf.target.system_root, self.preload)]
