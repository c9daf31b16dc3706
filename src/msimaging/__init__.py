"""msimaging: MRI imaging endpoints for multiple sclerosis clinical trials."""

__version__ = "0.1.0"
