from django import forms

from modules.briefing import MAX_BRIEFING_BYTES
from modules.models import dns_label
from ruddervirt import rubric

MAX_MANIFEST_BYTES = 1024 * 1024


class ModuleForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        validators=[dns_label],
        help_text="A DNS label: lowercase letters, digits and '-'.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    # strip=False: the text is stored byte for byte; its sha256 identifies it.
    manifest = forms.CharField(
        strip=False, widget=forms.Textarea(attrs={"rows": 30, "spellcheck": "false"})
    )

    def clean_manifest(self) -> str:
        text = self.cleaned_data["manifest"].replace("\r\n", "\n")
        if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
            raise forms.ValidationError("A manifest may be at most 1 MiB.")
        return text


class ManifestForm(forms.Form):
    # strip=False: the text is stored byte for byte; its sha256 identifies it.
    manifest = forms.CharField(
        strip=False, widget=forms.Textarea(attrs={"rows": 30, "spellcheck": "false"})
    )

    clean_manifest = ModuleForm.clean_manifest


class RubricForm(forms.Form):
    rubric = forms.CharField(
        strip=False, widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false"})
    )

    def clean_rubric(self) -> str:
        text = self.cleaned_data["rubric"].replace("\r\n", "\n")
        if len(text.encode("utf-8")) > rubric.MAX_BYTES:
            raise forms.ValidationError(f"A rubric may be at most {rubric.MAX_BYTES // 1024} KiB.")
        return text


class BriefingForm(forms.Form):
    briefing = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 20}),
        help_text="Markdown. Raw HTML is removed; links open in a new tab.",
    )

    def clean_briefing(self) -> str:
        text = self.cleaned_data["briefing"].replace("\r\n", "\n")
        if len(text.encode("utf-8")) > MAX_BRIEFING_BYTES:
            raise forms.ValidationError(
                f"A briefing may be at most {MAX_BRIEFING_BYTES // 1024} KiB."
            )
        return text
