from django.urls import path

from clones import lab_views, views

app_name = "clones"

urlpatterns = [
    path("classes/", views.class_list, name="classes"),
    path("classes/<int:pk>/", views.class_detail, name="class"),
    path("classes/<int:pk>/status.json", views.class_status, name="class-status"),
    path("classes/<int:pk>/students/", views.class_students, name="class-students"),
    path("classes/<int:pk>/launch/", views.class_launch, name="class-launch"),
    path("classes/<int:pk>/limits/", views.class_limits, name="class-limits"),
    path("classes/<int:pk>/grade/", lab_views.class_grade, name="class-grade"),
    path("classes/<int:pk>/gradebook.csv", lab_views.gradebook_csv, name="gradebook-csv"),
    path("classes/<int:pk>/<slug:action>/", views.class_action, name="class-action"),
    path("<int:pk>/", views.clone_detail, name="detail"),
    path("<int:pk>/status.json", views.clone_status, name="status"),
    path("<int:pk>/power/<slug:action>/", views.power, name="power"),
    path("<int:pk>/limits/", views.clone_limits, name="limits"),
    path("<int:pk>/grade/", lab_views.clone_grade, name="grade"),
    path("<int:pk>/lab/", lab_views.lab, name="lab"),
    path("<int:pk>/check/", lab_views.check_my_work, name="check"),
    path("<int:pk>/checks.json", lab_views.checks_status, name="checks"),
    path("<int:pk>/<slug:action>/", views.clone_action, name="action"),
    path("versions/<int:pk>/warm/", views.warm_make, name="warm-make"),
    path("versions/<int:pk>/warm/drop/", views.warm_drop, name="warm-drop"),
    path("mine.json", views.labs_status, name="labs-status"),
    path("join/<str:token>/", views.join, name="join"),
    path("account/password/", views.set_password, name="set-password"),
]
