"""KickstartSpecification and the handler and parser made from one, as in Anaconda's
pyanaconda/core/kickstart/specification.py (addons only: the add-on has no commands or
sections of its own). The handler writes each add-on's data after everything else; the
parser registers no default sections, only %addon."""
from pykickstart.base import KickstartHandler
from pykickstart.parser import KickstartParser

from pyanaconda.core.kickstart.addon import AddonRegistry, AddonSection
from pyanaconda.core.kickstart.version import VERSION


class KickstartSpecification:
    version = VERSION
    commands = {}
    commands_data = {}
    sections = {}
    sections_data = {}
    addons = {}


class KickstartSpecificationHandler(KickstartHandler):
    def __init__(self, specification):
        super().__init__()
        self.version = specification.version
        if specification.addons:
            self.addons = AddonRegistry()
        for name, data in specification.addons.items():
            obj = data()
            setattr(self.addons, name, obj)
            priority = max(self._writeOrder.keys()) + 100 if self._writeOrder else 0
            self._writeOrder[priority] = [obj]


class KickstartSpecificationParser(KickstartParser):
    def __init__(self, handler, specification):
        super().__init__(handler)
        if specification.addons:
            self.registerSection(AddonSection(handler))

    def setupSections(self):
        pass
