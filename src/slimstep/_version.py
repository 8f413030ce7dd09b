"""The version string, on the ground floor so that a checkpoint can record it
without importing the package root."""

__version__ = "0.1.0"
