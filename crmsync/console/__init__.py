"""The web console (``crmsync console``): a small server-rendered app for the work that needs a
person. It reads and writes only through the services the CLI uses, handed to it by the
composition root (``crmsync.cli.console``) as a :class:`~crmsync.console.app.Backend`."""
