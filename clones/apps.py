from django.apps import AppConfig


class ClonesConfig(AppConfig):
    name = "clones"
    verbose_name = "Clones"

    def ready(self) -> None:
        # What this app's work holds of the host counts whenever anyone asks for room.
        from clones.capacity import promised_by_clones
        from ruddervirt import capacity

        capacity.register("clones", promised_by_clones)
