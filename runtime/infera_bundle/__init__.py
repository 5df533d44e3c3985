"""Offline bundles: the wheels the runtime needs on a host without network, in parts of a given size.

``python -m infera_bundle make`` (on a machine with a package index) resolves, for a target Python
and platform, the wheel set that the runtime needs on top of what the target host already has
(a ``pip freeze`` of the host), downloads it with pip, splits files larger than ``--part-mib``
into numbered parts and writes ``MANIFEST.json`` (every file's size and sha256, every part's).
``python -m infera_bundle install`` (on the host, standard library and pip only) checks every
part, joins them, checks every wheel and installs them with ``pip install --no-index --no-deps``.
"""
