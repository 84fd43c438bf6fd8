"""Install a kickstart's %addon org_projectatomic_atomic_preloader section into SYSROOT as
Anaconda would at the end of an installation (the Boss's split, the service's read,
its installation tasks), with http://example.com served from ARCHIVES on loopback. For
the boot suite (tests/boot.rs): python run_kickstart.py KICKSTART SYSROOT ARCHIVES.
Needs ADDON_DIR like the pytest suite."""
import http.server
import os
import sys
import threading
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.environ["ADDON_DIR"], os.path.join(HERE, "stub"), HERE]

# pylint: disable=wrong-import-position
from boss import module_kickstart  # noqa: E402
from org_projectatomic_atomic_preloader.kickstart import ADDON_NAME  # noqa: E402
from org_projectatomic_atomic_preloader.service.preloader import Preloader  # noqa: E402
from pyanaconda.core.configuration.anaconda import conf  # noqa: E402
from pyanaconda.modules.common.errors.installation import InstallationError  # noqa: E402


def main(kickstart_path: str, sysroot: str, archives: str) -> int:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=archives)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with open(kickstart_path, encoding="utf-8") as f:
            kickstart = f.read().replace(
                "http://example.com", f"http://127.0.0.1:{httpd.server_address[1]}")
        service = Preloader()
        report = service.read_kickstart(module_kickstart(kickstart, ADDON_NAME))
        for error in report.error_messages:
            print(f"kickstart line {error.line_number}: {error.message}", file=sys.stderr)
        if report.error_messages:
            return 1
        conf.target.system_root = sysroot
        for requirement in service.collect_requirements():
            print(f"requires package {requirement.name}")
        for task in service.install_with_tasks():
            print(f"task: {task.name}")
            task.run()
    except InstallationError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
