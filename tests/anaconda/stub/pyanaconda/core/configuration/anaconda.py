"""conf.target.system_root: where the installed system is mounted (/mnt/sysroot in
Anaconda; tests point it at a temporary directory)."""
from types import SimpleNamespace

conf = SimpleNamespace(target=SimpleNamespace(system_root="/mnt/sysroot"))
