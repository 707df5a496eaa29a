"""The tiny bootable test guest image (see README.md and build.py)."""
