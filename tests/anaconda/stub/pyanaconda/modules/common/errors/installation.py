"""InstallationError: a task raising it fails the installation with its message."""


class InstallationError(Exception):
    pass
