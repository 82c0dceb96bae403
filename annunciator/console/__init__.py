"""The web console: server-rendered pages for operators, dispatchers and newcomers.

A built-in plugin (``annunciator.console.plugin``), registered through the ``annunciator``
entry-point group like any third-party one: it owns the ``console:`` config section and mounts its
pages under ``/console/``. See docs/console.md.
"""
