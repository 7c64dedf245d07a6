"""Mycelium Net command line: one `mycelium` command with a subcommand per component."""
