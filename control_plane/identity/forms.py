from __future__ import annotations

from django import forms


class PasswordStepForm(forms.Form):
    email = forms.CharField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "username",
                                                                           "autofocus": True}))
    password = forms.CharField(max_length=4096, strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class TotpStepForm(forms.Form):
    code = forms.CharField(max_length=32, label="Authenticator code",
                           help_text="The 6-digit code of your authenticator app, or a recovery code.",
                           widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True,
                                                         "inputmode": "numeric"}))


class InvitationAcceptForm(forms.Form):
    name = forms.CharField(max_length=150, required=False)
    password = forms.CharField(max_length=4096, strip=False, required=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password_again = forms.CharField(max_length=4096, strip=False, required=False,
                                     widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict:  # type: ignore[type-arg]
        cleaned = super().clean() or {}
        if cleaned.get("password") != cleaned.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return cleaned
