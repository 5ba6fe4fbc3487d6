from django.urls import path

from billing import slo_apis

urlpatterns = [
    path("slos", slo_apis.SloReportApi.as_view(), name="slos"),
    path("platform/slos", slo_apis.PlatformSloReportApi.as_view(), name="platform-slos"),
]
