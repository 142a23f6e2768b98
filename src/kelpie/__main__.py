from kelpie.cli import run

run()
