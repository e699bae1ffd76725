"""Every data shape crmsync passes between its parts. Imports nothing else of ours."""
