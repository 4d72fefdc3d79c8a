"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py app.wsgi:application`."""

from app import create_app

application = create_app()
