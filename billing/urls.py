from django.urls import path

from billing import apis

urlpatterns = [
    path("usage", apis.UsageApi.as_view(), name="usage"),
    path("usage/export", apis.UsageExportApi.as_view(), name="usage-export"),
    path("platform/finance/report", apis.PlatformFinanceReportApi.as_view(), name="platform-finance-report"),
]
