"""Where the helper is: fixed at build time (``make install-anaconda-addon`` fills in
BINDIR), as the systemd units name it."""

ATOMIC_PRELOAD = "@BINDIR@/atomic-preload"
