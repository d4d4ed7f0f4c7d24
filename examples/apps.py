from django.apps import AppConfig


class ExamplesConfig(AppConfig):
    name = "examples"
    label = "examples"
    verbose_name = "Example pipeline"
