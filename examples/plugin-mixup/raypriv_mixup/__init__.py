"""An example raypriv paradigm plugin (see README.md): ``mixup``."""

__version__ = "0.1.0"
