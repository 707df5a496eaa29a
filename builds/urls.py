from django.urls import path

from builds import views

app_name = "builds"

urlpatterns = [
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/status.json", views.status, name="status"),
    path("<int:pk>/log.txt", views.log_download, name="log"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/resume/", views.resume, name="resume"),
    path("<int:pk>/clean-up/", views.clean_up, name="clean-up"),
    path("<int:pk>/<str:decision>/", views.decide, name="decide"),
]
