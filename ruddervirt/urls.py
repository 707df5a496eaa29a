from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from builds import views as build_views
from ruddervirt import views

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("labs/", views.labs, name="labs"),
    path("healthz", views.healthz, name="healthz"),
    path("healthz/ready", views.healthz_ready, name="healthz-ready"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("modules/", include("modules.urls")),
    path("modules/<slug:name>/build/", build_views.start, name="build-start"),
    path("modules/<slug:name>/versions/<int:number>/", build_views.version_diff, name="version"),
    path(
        "modules/<slug:name>/versions/<int:number>/briefing/",
        build_views.version_briefing,
        name="version-briefing",
    ),
    path("builds/", include("builds.urls")),
    path("console/", include("consoles.urls")),
    path("clones/", include("clones.urls")),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]
