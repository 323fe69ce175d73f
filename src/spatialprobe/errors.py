"""User-facing errors: one line that names the file, field or model at fault."""


class SpatialProbeError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback."""
