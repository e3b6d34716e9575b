"""The example plugins' own tests run only where they are installed.

``poel-example-thumbnails`` and ``poel-example-tones`` are third-party plugins written from
docs/plugin-authors.md. Their tests need them installed as distributions, which the host's
test environments are not (they are never shipped): tests/test_example_plugin.py and the
``packaging`` tox environment install them and run them there. Here, from the host's test
run, they are skipped.
"""

collect_ignore = ["poel-example-thumbnails", "poel-example-tones"]
