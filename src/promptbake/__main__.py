from promptbake.cli.main import cli

cli()
