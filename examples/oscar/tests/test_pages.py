"""Oscar's product detail page with the similar-products tag, and the widget's prices."""

from __future__ import annotations

import re
from decimal import Decimal

from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.template import Context, Template
from django.test import RequestFactory
from oscar.apps.catalogue.models import ProductImage
from oscar.apps.partner.strategy import Selector

from visualsearch.models import ImageEmbedding
from visualsearch.query import similar_products


def _similar_section(html: str) -> str:
    """The markup of the example's "Similar products" list (templates/…/detail.html)."""
    match = re.search(r'<ul class="[^"]*similar-products[^"]*">(.*?)</ul>\s*$', html, re.S | re.M)
    assert match, "no similar-products list on the page"
    return match.group(1)


def _product_links(html: str) -> list[str]:
    """Product detail URLs in ``html``, in order, each once."""
    links = re.findall(r'href="(/catalogue/[^"/]+_\d+/)"', html)
    return list(dict.fromkeys(links))


def test_product_page_shows_similar_products_in_oscars_cards(client, embedded_catalogue):
    product = embedded_catalogue[0]
    assert ImageEmbedding.objects.filter(embedding_status="ready").count() == 12

    response = client.get(product.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert product.title in html  # Oscar's own page
    assert "Similar products" in html
    section = _similar_section(html)
    shown = _product_links(section)
    expected = [p.get_absolute_url() for p in similar_products(product, 8)]
    assert len(expected) == 8
    assert shown == expected  # best first, the product itself left out
    assert product.get_absolute_url() not in shown
    # Oscar's product card (partials/product.html): its price and basket form.
    assert section.count('class="product_pod"') == 8
    assert "price_color" in section


def test_products_oscar_hides_are_left_out(client, make_catalogue):
    products = make_catalogue(4)
    call_command("visualsearch_reindex", "--no-progress", verbosity=0)
    hidden = products[1]
    hidden.is_public = False  # Oscar answers 404 for its page
    hidden.save()

    response = client.get(products[0].get_absolute_url())

    shown = _product_links(_similar_section(response.content.decode()))
    assert shown and hidden.get_absolute_url() not in shown
    assert len(shown) == 2


def test_page_renders_while_visualsearch_has_no_vectors_yet(client, make_catalogue):
    products = make_catalogue(3)  # saved, not embedded: rows pending, nothing to show
    assert not ImageEmbedding.objects.filter(embedding_status="ready").exists()

    response = client.get(products[0].get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert products[0].title in html
    assert "Similar products" not in html


def test_page_renders_for_a_product_without_images(client, make_catalogue):
    (product,) = make_catalogue(1)
    ProductImage.objects.filter(product=product).delete()

    response = client.get(product.get_absolute_url())

    assert response.status_code == 200
    assert "Similar products" not in response.content.decode()


def test_widget_shows_oscars_price_through_the_product_price_hook(embedded_catalogue):
    product = embedded_catalogue[0]
    request = RequestFactory().get(product.get_absolute_url())
    request.user = AnonymousUser()
    request.strategy = Selector().strategy(request=request)
    template = Template("{% load visualsearch %}{% similar_products product limit=4 %}")

    html = template.render(Context({"product": product, "request": request}))

    prices = re.findall(r'<span class="vs-price">([^<]*)</span>', html)
    assert len(prices) == 4
    # StockRecord prices are 10 + position in the catalogue (conftest.make_catalogue).
    stocked = {p.title: Decimal(10 + i) for i, p in enumerate(embedded_catalogue)}
    names = re.findall(r'<span class="vs-name">([^<]*)</span>', html)
    for name, price in zip(names, prices, strict=True):
        assert Decimal(price) == stocked[name]
