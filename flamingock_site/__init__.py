# The Celery app lives in flamingock_site/celery.py and is imported only where it is needed
# (the worker finds it with `celery -A flamingock_site`, tasks import it), so that management
# commands such as `flamingock plan` do not pay for importing Celery.
