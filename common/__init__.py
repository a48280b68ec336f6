"""Small utilities every folder may use: atomic writes of local or remote files."""
