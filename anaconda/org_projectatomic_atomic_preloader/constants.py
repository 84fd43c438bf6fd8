"""The add-on's D-Bus names: org.fedoraproject.Anaconda.Addons.AtomicPreload (the
service file and bus policy in /usr/share/anaconda/dbus/ use the same)."""

from dasbus.identifier import DBusServiceIdentifier

from pyanaconda.core.dbus import DBus
from pyanaconda.modules.common.constants.namespaces import ADDONS_NAMESPACE

ATOMIC_PRELOAD_NAMESPACE = (*ADDONS_NAMESPACE, "AtomicPreload")

ATOMIC_PRELOAD = DBusServiceIdentifier(
    namespace=ATOMIC_PRELOAD_NAMESPACE,
    message_bus=DBus,
)
