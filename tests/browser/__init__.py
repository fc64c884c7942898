"""LHC-Forms in headless Chromium for DTR tests: see harness.py."""
