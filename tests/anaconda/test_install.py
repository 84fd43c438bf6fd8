"""The installation task against a temporary sysroot: one `atomic-preload stage` run
(the binary the add-on was built for) fetching from a loopback HTTP server, then the
generator over the result. Failures leave the sysroot exactly as it was."""
import hashlib
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

from boss import module_kickstart
from org_projectatomic_atomic_preloader.kickstart import ADDON_NAME
from org_projectatomic_atomic_preloader.service.preloader import Preloader
from pyanaconda.core.configuration.anaconda import conf
from pyanaconda.modules.common.errors.installation import InstallationError
from test_kickstart import REFERENCE

ARCHIVES = Path(os.environ.get("ARCHIVES", "/nonexistent"))
PRELOAD = Path("var/lib/atomic/preload")


class Handler(http.server.SimpleHTTPRequestHandler):
    """The archives; under /cut/ each is cut off halfway (its full length announced)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(ARCHIVES), **kwargs)

    def do_GET(self):
        if self.path.startswith("/cut/"):
            data = (ARCHIVES / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def sysroot(tmp_path, monkeypatch):
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    monkeypatch.setattr(conf.target, "system_root", str(root))
    return root


def snapshot(root: Path):
    """Every path with its content, link target or (directories) mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[path] = os.readlink(path)
        elif path.is_dir():
            out[path] = path.stat().st_mtime_ns
        else:
            out[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def install(kickstart):
    service = Preloader()
    report = service.read_kickstart(module_kickstart(kickstart, ADDON_NAME))
    assert report.error_messages == []
    for task in service.install_with_tasks():
        task.run()


def digest(name):
    return hashlib.sha256((ARCHIVES / name).read_bytes()).hexdigest()


def test_the_helper_is_the_one_the_addon_was_built_for(sysroot):
    service = Preloader()
    service.read_kickstart(module_kickstart(REFERENCE, ADDON_NAME))
    [task] = service.install_with_tasks()
    assert task.command(None) == [
        os.environ["ATOMIC_PRELOAD"], "stage", "--root", str(sysroot),
        "http://example.com/container.tar.gz",
        "--system-src", "http://example.com/syscontainer.tar.xz",
    ]


def test_the_reference_kickstart_stages_everything_for_first_boot(server, sysroot):
    kickstart = REFERENCE.replace("http://example.com", server).replace(
        "syscontainer.tar.xz\n", f"syscontainer.tar.xz#sha256={digest('syscontainer.tar.xz')}\n")
    install(kickstart)
    preload = sysroot / PRELOAD
    for kind, name in [("docker", "container.tar.gz"), ("ostree", "syscontainer.tar.xz")]:
        assert (preload / kind / name).read_bytes() == (ARCHIVES / name).read_bytes()
        assert (preload / kind / f"{name}.sha256").read_text() == f"{digest(name)}  {name}\n"
    assert (preload / "config.yaml").read_text() == (
        "- name: mysyscontainer\n"
        '  image: "example.com/mysyscontainer:latest"\n'
        "  install:\n    system: true\n  run: {}\n")
    units = subprocess.run(
        [os.environ["GENERATOR"], "--dry-run", "--root", str(sysroot)],
        capture_output=True, text=True, check=True).stdout
    assert "# preload-mysyscontainer.service" in units, units
    assert ("install-system --preload-dir=/var/lib/atomic/preload --name=mysyscontainer"
            " --image=example.com/mysyscontainer:latest\n") in units, units
    assert "start-system --name=mysyscontainer" in units, units


@pytest.mark.parametrize("change, says", [
    (lambda ks, url: ks.replace(f"{url}/container.tar.gz", f"{url}/cut/container.tar.gz"),
     "cut/container.tar.gz: transfer failed: Peer disconnected (after 3 attempts)"),
    (lambda ks, url: ks.replace("syscontainer.tar.xz\n", f"syscontainer.tar.xz#sha256={'0' * 64}\n"),
     f"not the expected {'0' * 64}; nothing staged"),
    (lambda ks, url: ks.replace("    system: true", "    system: ture"),
     "%addon org_projectatomic_atomic_preloader body, line 3 ('    system: ture'), column 13:"),
    (lambda ks, url: ks.replace("syscontainer.tar.xz", "missing.tar.xz"),
     "HTTP 404"),
])
def test_a_failure_fails_the_installation_with_stages_message_and_stages_nothing(
        server, sysroot, change, says):
    (sysroot / PRELOAD).mkdir(parents=True)
    (sysroot / PRELOAD / "config.yaml").write_text("- {name: base, image: a/b:1}\n")
    before = snapshot(sysroot)
    with pytest.raises(InstallationError) as failed:
        install(change(REFERENCE.replace("http://example.com", server), server))
    message = str(failed.value)
    assert message.startswith("Preloading containers failed, nothing was staged:\n"), message
    assert says in message, message
    assert snapshot(sysroot) == before


def test_a_missing_helper_says_how_to_get_it(sysroot):
    service = Preloader()
    service.read_kickstart(module_kickstart(REFERENCE, ADDON_NAME))
    [task] = service.install_with_tasks()
    task._helper = str(sysroot / "no-such-binary")
    with pytest.raises(InstallationError, match="make anaconda-updates-img"):
        task.run()
