"""What the tests share: running the command line (cli), and nothing that
stands in for a real component."""
