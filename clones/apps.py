from django.apps import AppConfig


class ClonesConfig(AppConfig):
    name = "clones"
    verbose_name = "Clones"
