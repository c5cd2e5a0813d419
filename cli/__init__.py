"""The szoq command-line interface (installed as the import package `szoq_cli`)."""
