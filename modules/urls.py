from django.urls import path

from modules import views

app_name = "modules"

urlpatterns = [
    path("", views.module_list, name="list"),
    path("new/", views.module_new, name="new"),
    path("validate/", views.validate_view, name="validate"),
    path("<slug:name>/", views.module_detail, name="detail"),
    path("<slug:name>/edit/", views.module_edit, name="edit"),
    path("<slug:name>/revisions/<int:number>.yaml", views.revision_text, name="revision"),
    path("<slug:name>/rubric/", views.rubric_edit, name="rubric"),
    path("<slug:name>/rubric/validate/", views.rubric_validate, name="rubric-validate"),
    path("<slug:name>/rubric/<int:number>.yaml", views.rubric_text, name="rubric-revision"),
    path("<slug:name>/briefing/", views.briefing_edit, name="briefing"),
]
