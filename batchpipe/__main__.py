from batchpipe.cli import entry

entry()
