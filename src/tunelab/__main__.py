from tunelab.cli import entry

entry()
