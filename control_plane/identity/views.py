"""The portal's HTML pages: sign-in (email and password, then the authenticator's code when TOTP is on),
sign-out, and accepting an invitation. Thin: parse a form, call one service, render or redirect."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from common.errors import AppError
from control_plane.identity import selectors, services
from control_plane.identity.errors import TotpRequired
from control_plane.identity.forms import InvitationAcceptForm, PasswordStepForm, TotpStepForm

PENDING_KEY = "identity_pending_sign_in"
PENDING_SECONDS = 300  # the code must follow the password within five minutes


def _address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def _safe_next(request: HttpRequest) -> str:
    """?next= (or the form's next) when it stays on this site, else LOGIN_REDIRECT_URL."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return settings.LOGIN_REDIRECT_URL


def _pending_user_id(request: HttpRequest) -> int | None:
    pending = request.session.get(PENDING_KEY)
    if not pending or pending.get("until", 0) < time.time():
        return None
    return int(pending["user_id"])


@method_decorator([sensitive_post_parameters("password", "code"), csrf_protect, never_cache], name="dispatch")
class SignInView(View):
    template_name = "identity/login.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        if request.GET.get("restart"):
            request.session.pop(PENDING_KEY, None)
        step = "totp" if _pending_user_id(request) else "password"
        form = TotpStepForm() if step == "totp" else PasswordStepForm()
        return self._render(request, step=step, form=form)

    def post(self, request: HttpRequest) -> HttpResponse:
        if request.POST.get("step") == "totp":
            return self._totp_step(request)
        form = PasswordStepForm(request.POST)
        if not form.is_valid():
            return self._render(request, step="password", form=form, status=400)
        try:
            user = services.user_sign_in(email=form.cleaned_data["email"], password=form.cleaned_data["password"],
                                         totp_code=None, address=_address(request))
        except TotpRequired:
            # the password was right: remember who, for the code step only
            user_id = selectors.user_find_by_email(email=form.cleaned_data["email"]).pk  # type: ignore[union-attr]
            request.session[PENDING_KEY] = {"user_id": user_id, "until": time.time() + PENDING_SECONDS}
            return self._render(request, step="totp", form=TotpStepForm())
        except AppError as exc:
            form.add_error(None, exc.message)
            return self._render(request, step="password", form=form, status=exc.http_status)
        return self._signed_in(request, user)

    def _totp_step(self, request: HttpRequest) -> HttpResponse:
        user_id = _pending_user_id(request)
        if user_id is None:
            form = PasswordStepForm()
            form.add_error(None, "The sign-in took too long; enter your email and password again.")
            return self._render(request, step="password", form=form, status=400)
        form = TotpStepForm(request.POST)
        if not form.is_valid():
            return self._render(request, step="totp", form=form, status=400)
        try:
            user = services.user_sign_in_second_factor(user_id=user_id, code=form.cleaned_data["code"],
                                                       address=_address(request))
        except AppError as exc:
            form.add_error(None, exc.message)
            return self._render(request, step="totp", form=form, status=exc.http_status)
        return self._signed_in(request, user)

    def _signed_in(self, request: HttpRequest, user) -> HttpResponse:  # type: ignore[no-untyped-def]
        request.session.pop(PENDING_KEY, None)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return HttpResponseRedirect(_safe_next(request))

    def _render(self, request: HttpRequest, *, step: str, form, status: int = 200) -> HttpResponse:  # type: ignore[no-untyped-def]
        next_url = request.POST.get("next") or request.GET.get("next") or ""
        return render(request, self.template_name, {"step": step, "form": form, "next": next_url}, status=status)


@method_decorator([csrf_protect, never_cache], name="dispatch")
class SignOutView(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        logout(request)
        return HttpResponseRedirect(settings.LOGIN_URL)


@method_decorator(never_cache, name="dispatch")
class SignedInView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        memberships = selectors.membership_list_for_user(user_id=request.user.pk)
        return render(request, "identity/signed_in.html", {"memberships": memberships})


@method_decorator([sensitive_post_parameters("password", "password_again", "token"), csrf_protect, never_cache],
                  name="dispatch")
class InvitationAcceptView(View):
    template_name = "identity/accept_invitation.html"

    def _context(self, token: str, form: InvitationAcceptForm) -> dict:  # type: ignore[type-arg]
        invitation = selectors.invitation_get_pending_by_token(token=token)
        return {"invitation": invitation, "token": token, "form": form,
                "has_account": selectors.user_find_by_email(email=invitation.email) is not None}

    def get(self, request: HttpRequest) -> HttpResponse:
        token = request.GET.get("token", "")
        try:
            return render(request, self.template_name, self._context(token, InvitationAcceptForm()))
        except AppError as exc:
            return render(request, self.template_name, {"error": exc.message}, status=exc.http_status)

    def post(self, request: HttpRequest) -> HttpResponse:
        token = request.POST.get("token", "")
        form = InvitationAcceptForm(request.POST)
        try:
            if not form.is_valid():
                return render(request, self.template_name, self._context(token, form), status=400)
            accepted = services.invitation_accept(token=token, password=form.cleaned_data["password"] or None,
                                                  name=form.cleaned_data["name"])
        except AppError as exc:
            form.add_error(None, exc.message)
            try:
                context = self._context(token, form)
            except AppError:
                context = {"error": exc.message}
            return render(request, self.template_name, context, status=exc.http_status)
        return render(request, "identity/invitation_accepted.html",
                      {"membership": accepted.membership, "login_url": settings.LOGIN_URL}, status=201)
