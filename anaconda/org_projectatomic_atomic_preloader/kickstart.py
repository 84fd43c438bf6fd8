"""The kickstart side: parse ``%addon org_projectatomic_atomic_preloader`` and write it
back. Pure: no D-Bus, no processes, no YAML (the body is handed to ``atomic-preload
stage``, which validates it).

Syntax, as the original atomic-preload README gave it::

    %addon org_projectatomic_atomic_preloader \\
        --preload-docker http://example.com/container.tar.gz \\
        --preload-system http://example.com/syscontainer.tar.xz
    - name: mysyscontainer
      install:
        system: true
      run: {}
    %end

What reaches an add-on is not quite what was written (seen with Anaconda's own kickstart
code): the installer's Boss re-joins the header's arguments with spaces, and pykickstart
has no backslash continuation, so that header arrives empty and the option lines arrive
as body lines. Leading body lines that begin with ``--`` (not ``---``, a YAML document
start) are therefore options too, a trailing backslash ignored. Blank lines and lines
that are ``#`` comments never reach an add-on at all.

In the ``%addon`` line itself ``#`` starts a comment, so a digest there
(``URL#sha256=HEX``) is cut off before the add-on sees it (quotes and ``\\#`` do not
survive the re-join either): digests go on option lines of their own, which reach the
add-on verbatim. ``__str__`` writes every option that way.
"""

from __future__ import annotations

import shlex
import string
from dataclasses import dataclass, field
from typing import List, Optional
from urllib.parse import urlsplit

from pykickstart.errors import KickstartParseError
from pykickstart.options import KSOptionParser

from pyanaconda.core.kickstart import VERSION, KickstartSpecification
from pyanaconda.core.kickstart.addon import AddonData

ADDON_NAME = "org_projectatomic_atomic_preloader"


@dataclass(frozen=True)
class Source:
    """An archive to stage: an http(s) URL or an absolute path in the installer's file
    system (the installation media: /run/install/repo/...), with the SHA-256 it must have
    when the kickstart gives one (``URL#sha256=HEX``, as pip takes it)."""

    location: str
    sha256: Optional[str] = None

    def __str__(self) -> str:
        if self.sha256 is None:
            return self.location
        return f"{self.location}#sha256={self.sha256}"


def parse_source(text: str, option: str, line_number: Optional[int]) -> Source:
    """A source as written after ``option``; a KickstartParseError saying what is wrong."""

    def bad(why: str) -> KickstartParseError:
        return KickstartParseError(f"{option} {text}: {why}", lineno=line_number)

    if text.startswith(("docker-image:", "podman-image:")):
        raise bad("an installer has no container engine to save images from: "
                  "give the URL of an archive (docker save, podman save)")
    if any(c in string.whitespace for c in text):
        raise bad("a URL cannot contain white space (the installer splits the %addon "
                  "line at spaces, quotes or not): percent-encode it (%20)")
    location, _, fragment = text.partition("#")
    sha256 = None
    if fragment:
        hex_digits = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        if hex_digits is None:
            raise bad("the only fragment taken is #sha256=HEX, the archive's SHA-256")
        if len(hex_digits) != 64 or any(c not in string.hexdigits for c in hex_digits):
            raise bad("#sha256= takes a SHA-256 digest (64 hex digits)")
        sha256 = hex_digits.lower()
    if location.startswith("/"):
        if location.endswith("/"):
            raise bad("names a directory, not an archive")
        return Source(location, sha256)
    parts = urlsplit(location)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad("not an http:// or https:// URL, nor an absolute path")
    if not parts.path.rsplit("/", 1)[-1]:
        raise bad("the URL's path must end in the archive's file name")
    return Source(location, sha256)


def _option_parser() -> KSOptionParser:
    op = KSOptionParser(
        prog=f"%addon {ADDON_NAME}",
        version=VERSION,
        description="Archives of container images (and config.yaml entries, the "
                    "section's body) for atomic-preload to load at first boot.",
    )
    op.add_argument("--preload-docker", action="append", dest="docker", default=[],
                    metavar="URL", version=VERSION,
                    help="An archive an engine (Docker or Podman) loads; repeatable.")
    op.add_argument("--preload-system", action="append", dest="system", default=[],
                    metavar="URL", version=VERSION,
                    help="A system container's archive (runc runs it); repeatable.")
    return op


@dataclass
class Preload:
    """What the section says, as plain data (the service keeps a copy)."""

    seen: bool = False
    docker: List[Source] = field(default_factory=list)
    system: List[Source] = field(default_factory=list)
    #: The body, config.yaml entries, as the lines that reached the add-on.
    lines: List[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.docker or self.system or "".join(self.lines).strip())


class PreloadData(AddonData):
    """ksdata.addons.org_projectatomic_atomic_preloader."""

    def __init__(self) -> None:
        super().__init__()
        self.preload = Preload()

    def _options(self, args: List[str], line_number: Optional[int]) -> None:
        ns = _option_parser().parse_args(args=args, lineno=line_number)
        self.preload.docker += [parse_source(u, "--preload-docker", line_number)
                                for u in ns.docker]
        self.preload.system += [parse_source(u, "--preload-system", line_number)
                                for u in ns.system]

    def handle_header(self, args: List[str], line_number: Optional[int] = None) -> None:
        self.preload.seen = True
        # A header ending in a backslash leaves it (or the newline) as an argument.
        self._options([a for a in args if a.strip() not in ("", "\\")], line_number)

    def handle_line(self, line: str, line_number: Optional[int] = None) -> None:
        stripped = line.strip()
        if not self.preload.lines and stripped.startswith("--") \
                and not stripped.startswith("---"):
            if stripped.endswith("\\"):
                stripped = stripped[:-1]
            try:
                args = shlex.split(stripped)
            except ValueError as e:
                raise KickstartParseError(f"{stripped}: {e}", lineno=line_number) from e
            self._options(args, line_number)
            return
        self.preload.lines.append(line if line.endswith("\n") else line + "\n")

    def handle_end(self) -> None:
        pass

    def __str__(self) -> str:
        if not self.preload.seen:
            return ""
        # Options on lines of their own: the only place a #sha256= digest survives.
        options = "".join(f"--preload-docker {_word(s)}\n" for s in self.preload.docker)
        options += "".join(f"--preload-system {_word(s)}\n" for s in self.preload.system)
        return f"\n%addon {ADDON_NAME}\n{options}{''.join(self.preload.lines)}%end\n"


def _word(source: Source) -> str:
    """A source as one word of an option line, quoted only when it has to be."""
    text = str(source)
    return text if shlex.split(text) == [text] else shlex.quote(text)


class PreloadKickstartSpecification(KickstartSpecification):
    """The add-on's only kickstart element is its %addon section."""

    addons = {ADDON_NAME: PreloadData}
