from scalpel.cli import main

main()
