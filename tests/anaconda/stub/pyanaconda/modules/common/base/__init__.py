"""KickstartService as in Anaconda's pyanaconda/modules/common/base/base.py, for what
the add-on uses: its specification's handler and parser, read_kickstart (errors become
a report, not exceptions) and generate_kickstart; no D-Bus."""
import warnings
from dataclasses import dataclass, field
from typing import List

from pykickstart.errors import KickstartError, KickstartParseWarning

from pyanaconda.core.kickstart.specification import (
    KickstartSpecification,
    KickstartSpecificationHandler,
    KickstartSpecificationParser,
)


@dataclass
class KickstartMessage:
    message: str
    line_number: int


@dataclass
class KickstartReport:
    error_messages: List[KickstartMessage] = field(default_factory=list)
    warning_messages: List[KickstartMessage] = field(default_factory=list)

    def is_valid(self):
        return not self.error_messages


class KickstartModuleInterface:
    """Anaconda's is a dasbus interface template; nothing of it is exercised here."""

    def __init__(self, implementation):
        self.implementation = implementation


class KickstartService:
    def __init__(self):
        self.kickstarted = False

    @property
    def kickstart_specification(self):
        return KickstartSpecification

    def process_kickstart(self, data):
        pass

    def setup_kickstart(self, data):
        pass

    def collect_requirements(self):
        return []

    def install_with_tasks(self):
        return []

    def read_kickstart(self, s):
        report = KickstartReport()
        try:
            handler = KickstartSpecificationHandler(self.kickstart_specification)
            parser = KickstartSpecificationParser(handler, self.kickstart_specification)
            with warnings.catch_warnings(record=True) as warns:
                warnings.simplefilter(action="always", category=KickstartParseWarning)
                parser.readKickstartFromString(s)
                self.process_kickstart(handler)
                for warn in warns:
                    if issubclass(warn.category, KickstartParseWarning):
                        report.warning_messages.append(KickstartMessage(str(warn.message), 0))
        except KickstartError as e:
            report.error_messages.append(KickstartMessage(e.message, e.lineno))
        else:
            self.kickstarted = True
        return report

    def generate_kickstart(self):
        handler = KickstartSpecificationHandler(self.kickstart_specification)
        self.setup_kickstart(handler)
        return str(handler)
