"""Requirement.for_package, as in Anaconda's structures/requirement.py."""
REQUIREMENT_TYPE_PACKAGE = "package"


class Requirement:
    def __init__(self):
        self.type = ""
        self.name = ""
        self.reason = ""

    @classmethod
    def for_package(cls, package_name, reason=""):
        requirement = cls()
        requirement.type = REQUIREMENT_TYPE_PACKAGE
        requirement.name = package_name
        requirement.reason = reason
        return requirement
