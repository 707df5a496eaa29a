from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    verbose_name = "Builds"

    def ready(self) -> None:
        # Saving a manifest checks its buildRefs against the module versions this app keeps,
        # and what this app's builds hold of the host counts whenever anyone asks for room.
        from builds.admission import promised_by_builds
        from builds.refs import with_ref_problems
        from modules.services import register_check
        from ruddervirt import capacity

        register_check("buildRef", with_ref_problems)
        capacity.register("builds", promised_by_builds)
