from django.urls import path

from control_plane.identity import apis

urlpatterns = [
    path("auth/login", apis.LoginApi.as_view(), name="auth-login"),
    path("auth/logout", apis.LogoutApi.as_view(), name="auth-logout"),
    path("auth/me", apis.MeApi.as_view(), name="auth-me"),
    path("auth/password", apis.PasswordChangeApi.as_view(), name="auth-password"),
    path("auth/totp/setup", apis.TotpSetupApi.as_view(), name="auth-totp-setup"),
    path("auth/totp/confirm", apis.TotpConfirmApi.as_view(), name="auth-totp-confirm"),
    path("auth/totp/disable", apis.TotpDisableApi.as_view(), name="auth-totp-disable"),
    path("members", apis.MemberListApi.as_view(), name="members"),
    path("members/<uuid:membership_id>", apis.MemberDetailApi.as_view(), name="member-detail"),
    path("invitations", apis.InvitationListCreateApi.as_view(), name="invitations"),
    path("invitations/accept", apis.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("invitations/<uuid:invitation_id>", apis.InvitationDetailApi.as_view(), name="invitation-detail"),
]
