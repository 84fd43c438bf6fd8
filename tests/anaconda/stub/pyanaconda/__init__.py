"""A stand-in for the few names of Anaconda's ``pyanaconda`` the add-on imports, for
tests only (Anaconda is not installable on Debian). Signatures and behaviour follow
Anaconda's own source (rhinstaller/anaconda main, 2026-08; pykickstart >= 3.77), the
kickstart parts closely (they decide what reaches an add-on), the rest minimally.
Never on the add-on package's path."""
