"""mltrail-jsondir: an mltrail backend that keeps a store as JSON files in a folder.

It is a worked example of a third-party backend: a distribution of its own,
registered under the `mltrail.backends` entry point group with the scheme
`jsondir`, that passes the mltrail conformance suite.

    import mltrail

    store = mltrail.connect("jsondir:///tmp/my-store")
"""

from mltrail_jsondir.backend import JsonDirBackend
from mltrail_jsondir.harness import JsonDirConformanceHarness

__version__ = "0.1.0"

__all__ = ["JsonDirBackend", "JsonDirConformanceHarness", "__version__"]
