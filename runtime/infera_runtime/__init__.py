"""infera runtime: an OpenAI-compatible HTTP server over vLLM's async engine.

The container entry point is ``python -m infera_runtime`` (console script ``infera-runtime``).
Importing this package is cheap: the engine (and vLLM) is only imported when it is started.
"""

__version__ = "0.1.0"
