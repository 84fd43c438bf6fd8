"""What /usr/libexec/anaconda/start-module runs for the add-on's D-Bus service."""

from pyanaconda.modules.common import init

init()  # before the service's own imports, as Anaconda's modules do

# pylint: disable=wrong-import-position
from org_projectatomic_atomic_preloader.service.preloader import Preloader  # noqa: E402

Preloader().run()
