from crystal_cli.main import entry

entry()
