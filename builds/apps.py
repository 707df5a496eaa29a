from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    verbose_name = "Builds"

    def ready(self) -> None:
        # Saving a manifest checks its buildRefs against the module versions this app keeps,
        # and what this app's builds hold of the host counts whenever anyone asks for room.
        from builds import recovery, runner
        from builds.admission import promised_by_builds
        from builds.jobs import QUEUE, job_timeout_for
        from builds.models import Build
        from builds.refs import with_ref_problems
        from jobs import registry
        from modules.services import register_check
        from ruddervirt import capacity

        register_check("buildRef", with_ref_problems)
        capacity.register("builds", promised_by_builds)
        # A build runs as a job of the one runner; its leftovers, kept VMs and disks are swept by
        # the one reconcile.
        registry.register(
            registry.Kind(
                name=runner.KIND,
                model=Build,
                queue=QUEUE,
                run=runner.build_job,
                timeout_s=job_timeout_for,
                interrupted=runner.interrupted,
            )
        )
        registry.register_owner(
            registry.Owner(tag=recovery.OWNER_TAG, key_field="build", live=recovery.live_build_keys)
        )
        registry.register_sweep("builds", recovery.sweep)
