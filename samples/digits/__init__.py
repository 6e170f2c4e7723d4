"""The bundled digits sample (make.py builds it)."""
