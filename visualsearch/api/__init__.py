"""REST API for similar products and image/text search (Django REST framework)."""
