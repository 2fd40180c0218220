"""Surfaces for shoppers: how a product is shown (display), the render cache of the widgets
(cache) and the one upload form (forms)."""
