"""The frontier recipes (planned) and their tiny twins (run on CPU): see README.md."""
