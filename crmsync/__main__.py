from crmsync.cli.app import main

main()
