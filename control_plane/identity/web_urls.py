"""The portal's HTML pages for signing in (settings.LOGIN_URL, used by the OAuth authorize flow), signing
out and accepting an invitation."""

from django.urls import path

from control_plane.identity import views

urlpatterns = [
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
    path("signed-in/", views.SignedInView.as_view(), name="signed-in"),
    path("invitations/accept/", views.InvitationAcceptView.as_view(), name="invitation-accept-page"),
]
