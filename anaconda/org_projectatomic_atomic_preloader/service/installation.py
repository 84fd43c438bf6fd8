"""The installation task: one ``atomic-preload stage --root SYSROOT`` for the whole
section, so the installed system gets every archive and entry, or (on any failure)
nothing, and the installation fails with stage's own message."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import tempfile
from typing import List, Optional

from pyanaconda.modules.common.errors.installation import InstallationError
from pyanaconda.modules.common.task import Task

from org_projectatomic_atomic_preloader.kickstart import ADDON_NAME, Preload
from org_projectatomic_atomic_preloader.paths import ATOMIC_PRELOAD

log = logging.getLogger(__name__)

#: The body as stage reads it (--config); its name is replaced in the messages shown.
BODY_NAME = "addon-body.yaml"


def redact(text: str) -> str:
    """Credentials in URLs (``https://user:token@host/``) are never logged."""
    return re.sub(r"(https?://)[^/@\s]*@", r"\1***@", text)


class StageTask(Task):
    """Stage the section's archives and entries into the installed system."""

    def __init__(self, sysroot: str, preload: Preload, helper: str = ATOMIC_PRELOAD) -> None:
        super().__init__()
        self._sysroot = sysroot
        self._preload = preload
        self._helper = helper

    @property
    def name(self) -> str:
        return "Stage preloaded containers (atomic-preload)"

    def command(self, config: Optional[str]) -> List[str]:
        """The stage command line: Docker sources as SRC, system ones as --system-src,
        each with its digest as #sha256=HEX."""
        cmd = [self._helper, "stage", "--root", self._sysroot]
        if config is not None:
            cmd += ["--config", config]
        cmd += [str(s) for s in self._preload.docker]
        for source in self._preload.system:
            cmd += ["--system-src", str(source)]
        return cmd

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="atomic-preload-") as tmp:
            config = None
            if "".join(self._preload.lines).strip():
                config = os.path.join(tmp, BODY_NAME)
                with open(config, "w", encoding="utf-8") as body:
                    body.writelines(self._preload.lines)
            cmd = self.command(config)
            log.info("Running %s", redact(shlex.join(cmd)))
            try:
                result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                        text=True, check=False)
            except OSError as e:
                raise InstallationError(
                    f"atomic-preload cannot run ({self._helper}: {e.strerror}): the "
                    "installer environment needs it (make anaconda-updates-img)") from e
            for line in result.stdout.splitlines():
                log.info("%s", line)
            if result.returncode != 0:
                raise InstallationError(self.explain(result.stderr, config))

    def explain(self, stderr: str, config: Optional[str]) -> str:
        """stage's message, with the body's FILE:LINE:COL shown as the body line itself
        (line numbers of the kickstart file do not reach an add-on)."""
        message = stderr.strip() or "atomic-preload stage failed"
        if config is not None:
            def body_line(match: re.Match) -> str:
                line, column = int(match.group(1)), match.group(2)
                lines = self._preload.lines
                text = f" ({lines[line - 1].rstrip()!r})" if 0 < line <= len(lines) else ""
                return f"%addon {ADDON_NAME} body, line {line}{text}, column {column}:"
            message = re.sub(re.escape(config) + r":(\d+):(\d+):", body_line, message)
            message = message.replace(config, f"the %addon {ADDON_NAME} body")
        return f"Preloading containers failed, nothing was staged:\n{message}"
