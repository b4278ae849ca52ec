from clipseg_cli.cli import main

main()
