"""The typer CLI: one small module per command, wiring only; the library does the work."""
