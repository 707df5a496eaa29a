from django.apps import AppConfig


class ClonesConfig(AppConfig):
    name = "clones"
    verbose_name = "Clones"

    def ready(self) -> None:
        # What this app's work holds of the host counts whenever anyone asks for room.
        from builds import version_panels
        from clones import grading, reconcile, runner, views, warm
        from clones.capacity import promised_by_clones
        from clones.jobs import JOB_TIMEOUT_S, QUEUE, kind_name
        from clones.models import Clone, GradingRun
        from jobs import registry
        from ruddervirt import capacity
        from ruddervirt.engine.clone import KIND

        capacity.register("clones", promised_by_clones)
        # Every clone action is a job of the one runner; the one reconcile settles a clone
        # whose worker died, sweeps the clones' states and limits, and removes leftovers.
        for action in runner.HANDLERS:
            registry.register(
                registry.Kind(
                    name=kind_name(action),
                    label=action,
                    model=Clone,
                    queue=QUEUE,
                    run=runner.run_action,
                    timeout_s=lambda clone: JOB_TIMEOUT_S,
                    interrupted=runner.interrupted,
                    unqueued=runner.unqueued,
                    batch=runner.provision_batch if action == "provision" else None,
                )
            )
        registry.register(
            registry.Kind(
                name=grading.KIND,
                label="checks",
                model=GradingRun,
                queue=QUEUE,
                run=grading.run_job,
                timeout_s=grading.job_timeout,
                interrupted=grading.interrupted,
                unqueued=grading.unqueued,
            )
        )
        registry.register_owner(
            registry.Owner(tag=KIND, key_field="clone", live=reconcile.live_clone_keys)
        )
        registry.register_sweep("clones", reconcile.reconcile_clones)
        warm.register(registry)
        version_panels.register("warm", views.warm_panel)
