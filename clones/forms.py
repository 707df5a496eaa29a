"""Forms of the class pages."""

from __future__ import annotations

from django import forms
from django.utils import timezone

from builds.models import ModuleVersion


class ClassForm(forms.Form):
    name = forms.CharField(max_length=100)


class StudentsForm(forms.Form):
    entries = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "alice\nbob@example.edu, carol"}),
        label="Usernames or e-mail addresses",
    )
    mode = forms.ChoiceField(
        choices=[("link", "invitation link"), ("password", "one-time password")],
        initial="link",
        label="New accounts get",
    )


class LimitsForm(forms.Form):
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        label="Expires",
    )
    inactivity_min = forms.IntegerField(
        required=False, min_value=1, max_value=7 * 24 * 60, label="Shut down after (minutes idle)"
    )

    def clean_expires_at(self):
        value = self.cleaned_data["expires_at"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value

    @property
    def inactivity_s(self) -> int | None:
        minutes = self.cleaned_data.get("inactivity_min")
        return minutes * 60 if minutes else None


class LaunchForm(LimitsForm):
    version = forms.ModelChoiceField(queryset=ModuleVersion.objects.none(), label="Module version")
    full_copy = forms.BooleanField(required=False, label="Full copies instead of linked clones")
    start = forms.ChoiceField(
        choices=[
            ("", "warm when the version has a warm image"),
            ("warm", "warm (resume the warm image)"),
            ("cold", "cold (boot every VM)"),
        ],
        required=False,
        label="Start",
    )

    def __init__(self, *args, versions=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if versions is not None:
            self.fields["version"].queryset = versions
