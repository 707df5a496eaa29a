"""The Debian 12 test OS image, shaped like Debian's genericcloud image (see README.md)."""
