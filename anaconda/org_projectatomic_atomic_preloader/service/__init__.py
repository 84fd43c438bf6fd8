"""The add-on's D-Bus service (Anaconda starts it with start-module)."""
