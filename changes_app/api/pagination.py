from rest_framework import pagination


class Pagination(pagination.PageNumberPagination):
    """Page numbers for the short lists (runs, requests); the audit trail uses a cursor on seq."""

    page_size_query_param = "page_size"
    max_page_size = 500
