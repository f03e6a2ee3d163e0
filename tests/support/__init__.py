"""What the tests share: running the command line (cli), a hand-moved clock, and nothing that
stands in for a real component."""
