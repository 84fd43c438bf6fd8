"""Anaconda add-on for atomic-preload: the ``%addon org_projectatomic_atomic_preloader``
section of a kickstart declares container archives (and config entries) that the
installed system loads at its first boot. The installation task hands all of it to one
``atomic-preload stage --root SYSROOT`` run."""
