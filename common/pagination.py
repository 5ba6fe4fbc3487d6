"""Limit/offset pagination for APIView lists, with a matching OpenAPI component."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


def paginated_response(
    *, request: Request, view: APIView, queryset: QuerySet[Any], serializer_class: type[serializers.Serializer]
) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def counted_page_response(
    *, request: Request, page: Callable[[int, int], tuple[int, Sequence[Any]]],
    serializer_class: type[serializers.Serializer]
) -> Response:
    """The same page as ``paginated_response``, for a list that knows its length without counting its rows:
    ``page(offset, limit)`` returns (how many there are, the items from ``offset``, at most ``limit``)."""
    paginator = Pagination()
    paginator.request, paginator.limit, paginator.offset = request, paginator.get_limit(request), \
        paginator.get_offset(request)
    paginator.count, items = page(paginator.offset, paginator.limit)
    return paginator.get_paginated_response(serializer_class(items, many=True).data)


@cache
def paginated(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The OpenAPI shape of a page of ``serializer_class`` items."""
    name = serializer_class.__qualname__.replace(".", "").removesuffix("Serializer")
    return type(
        f"Paginated{name}List",
        (serializers.Serializer,),
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
