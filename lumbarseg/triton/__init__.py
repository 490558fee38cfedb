"""NVIDIA Triton: the local server launcher (and, later, export and client)."""
