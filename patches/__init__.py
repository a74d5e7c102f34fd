"""Tooling for the fused cross entropy patch series against PyTorch v2.13.0.

The ``*.patch`` files next to this module are the single source of truth for
the proposed upstream change.  This package checks them (``python -m patches
check``), turns them into a git workspace and back (``workspace`` /
``export``), and builds their new C++ files as an out-of-tree torch extension
so that the patched ``cross_entropy`` runs against the installed wheel
(``patches.oot.patched_cross_entropy``).
"""
