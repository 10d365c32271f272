"""streamrl: event-sourced streaming RL post-training for LLMs.

Everything installs under this one name. The checkout keeps the design's top-level folders
(`schemas/`, `producers/`, `consumers/`), and they are this package's subpackages
`streamrl.schemas`, `streamrl.producers` and `streamrl.consumers`: a wheel maps them there
(setup.py), and a checkout that is run in place (tests, the GPU machine) finds them beside this
folder. So installing streamrl never puts a generic `schemas` or `producers` at the top of a
user's site-packages (docs/architecture.md, "One namespace").
"""

import os as _os

# The sibling folders that are subpackages of `streamrl`; setup.py reads this tuple too.
FOLDERS = ("schemas", "producers", "consumers")

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, FOLDERS[0])) and all(
        _os.path.isfile(_os.path.join(_checkout, f, "__init__.py")) for f in FOLDERS):
    # Run in place from a checkout: let `streamrl.schemas` etc. resolve to the sibling folders.
    # Only those: any other name under the checkout stays out of the package's namespace.
    import importlib.machinery as _machinery
    import sys as _sys

    class _CheckoutFolders:
        """Finds `streamrl.<folder>` for the three folders beside this package."""

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            head, _, name = fullname.partition(".")
            if head != __name__ or name not in FOLDERS:
                return None
            return _machinery.PathFinder.find_spec(fullname, [_checkout])

    _sys.meta_path.insert(0, _CheckoutFolders())
