from django.urls import path

from consoles import views

app_name = "consoles"

urlpatterns = [
    path("<slug:kind>/<int:object_id>/<slug:vm>/", views.page, name="page"),
    path("<slug:kind>/<int:object_id>/<slug:vm>/token", views.token, name="token"),
]
