"""The D-Bus interface: only what every kickstart module has (the kickstart is this
add-on's whole interface; it has no spoke)."""

from dasbus.server.interface import dbus_interface

from pyanaconda.modules.common.base import KickstartModuleInterface

from org_projectatomic_atomic_preloader.constants import ATOMIC_PRELOAD


@dbus_interface(ATOMIC_PRELOAD.interface_name)
class PreloaderInterface(KickstartModuleInterface):
    """org.fedoraproject.Anaconda.Addons.AtomicPreload"""
