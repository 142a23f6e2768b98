from kelpie.cli import main

main()
