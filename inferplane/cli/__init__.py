"""The `inferplane` command line. One module per command group."""
