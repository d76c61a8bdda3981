"""raypriv: membership-inference audits of training on synthetic data, at cluster scale."""

__version__ = "0.1.0"
