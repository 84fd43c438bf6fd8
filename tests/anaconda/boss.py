"""What Anaconda's Boss hands an add-on's service: the Boss splits the whole kickstart
with pykickstart (every line of a section kept, header arguments tokenized by shlex)
and gives each module the elements it asked for, each %addon re-made as
``" ".join(header arguments) + "\\n" + body + "%end\\n"`` (Anaconda's
SplitKickstartParser and KickstartElement, pyanaconda/modules/boss/kickstart_manager/).
Written here from that behaviour, for tests."""
from typing import List

from pykickstart.parser import KickstartParser
from pykickstart.sections import Section
from pykickstart.version import DEVEL, makeVersion


class _Store(Section):
    allLines = True

    def __init__(self, handler, opening: str, into: List[str]):
        super().__init__(handler)
        self.sectionOpen = opening
        self._into = into
        self._args: List[str] = []
        self._lines: List[str] = []

    def handleHeader(self, lineno, args):
        self._args = args

    def handleLine(self, line):
        self._lines.append(line)

    def finalize(self):
        if len(self._args) > 1 and self._args[0] == "%addon":
            self._into.append((self._args[1], "{}\n{}%end\n".format(
                " ".join(self._args), "".join(self._lines))))
        self._args, self._lines = [], []


class _Splitter(KickstartParser):
    def __init__(self, into):
        self._into = into
        super().__init__(makeVersion(DEVEL))

    def handleCommand(self, lineno, args):
        pass  # commands go to other modules

    def setupSections(self):
        self._sections = {}
        for opening in ("%pre", "%pre-install", "%post", "%onerror", "%traceback",
                        "%packages", "%addon", "%certificate"):
            self.registerSection(_Store(self.handler, opening, self._into))


def module_kickstart(kickstart: str, addon: str) -> str:
    """The kickstart string the add-on named ``addon`` is given to read."""
    elements: List[tuple] = []
    _Splitter(elements).readKickstartFromString(kickstart)
    return "".join(content for name, content in elements if name == addon)
