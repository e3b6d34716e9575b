"""The example plugin's own tests run only where it is installed.

``poel-example-thumbnails`` is a third-party plugin written from docs/plugin-authors.md.
Its tests need it installed as a distribution, which the host's test environments are not
(it is never shipped): tests/test_example_plugin.py and the ``packaging`` tox environment
install it and run them there. Here, from the host's test run, they are skipped.
"""

collect_ignore = ["poel-example-thumbnails"]
