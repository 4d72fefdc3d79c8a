"""WSGI entry point for gunicorn: `gunicorn -c python:app.gunicorn_conf app.wsgi:application`."""

from app import create_app

application = create_app()
