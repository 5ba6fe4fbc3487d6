from django.urls import path

from billing import quota_apis

urlpatterns = [
    path("quotas", quota_apis.QuotaApi.as_view(), name="quotas"),
]
