"""The example plugins' own tests run only where they are installed.

``poel-example-thumbnails`` and ``poel-example-tones`` are third-party plugins written from
docs/plugin-authors.md, ``poel-example-pipeline`` the README's workflow example. Their tests
need them installed as distributions, which the host's test environments are not (they are
never shipped): tests/test_example_plugin.py installs them and runs them there (the
``packaging`` tox environment does the same for the first two, from wheels). Here, from the
host's test run, they are skipped.
"""

collect_ignore = ["poel-example-thumbnails", "poel-example-tones", "poel-example-pipeline"]
