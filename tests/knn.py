"""Recognising the k-NN statements among captured queries."""


def is_knn(sql: str) -> bool:
    """Whether ``sql`` ranks by vector distance: ``<=>`` (cosine, the HNSW index) or ``<#>``
    (inner product: the exact scan over filtered rows)."""
    return "<=>" in sql or "<#>" in sql
