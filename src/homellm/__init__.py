"""homellm: run, protect, measure and train your own LLMs on your own GPUs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("homellm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
