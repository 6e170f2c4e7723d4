"""Op converters, one module per op family. Importing this package registers them all."""
from . import conv, elementwise, shape  # noqa: F401
