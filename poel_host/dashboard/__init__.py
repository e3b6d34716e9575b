"""The web dashboard: queues, jobs and their errors, workflows drawn as graphs, running
jobs, schedules, workers.

``make_app(settings)`` returns a WSGI application (a bottle app): ``poel-host dashboard``
serves it on its own port, and a team can mount it inside its own web application::

    # Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from poel_host.dashboard import make_app
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/poel": make_app()})

    # Django (urls.py), with django-wsgi or any WSGI mount; or in wsgi.py:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    application = DispatcherMiddleware(get_wsgi_application(), {"/poel": make_app()})

Pages are rendered on the server (bottle's templates, every value escaped); no JavaScript.
Without ``POEL_DASHBOARD_TOKEN`` it is read-only, open to whoever reaches it (loopback by
default), and every page says so. With it, every page needs a session signed in with the
token, kept on the server (:mod:`.signin`); a signed-in operator can retry, cancel or
delete a job, or retry every failed job of a type, each action checked against cross-site
requests and written to ``<schema>.audit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poel_host.dashboard.app import make_app

__all__ = ["make_app"]


def __getattr__(name: str) -> Any:
    if name == "make_app":
        from poel_host.dashboard.app import make_app

        return make_app
    raise AttributeError(f"module 'poel_host.dashboard' has no attribute {name!r}")
