"""Settings of the API latency benchmark's server: the product's settings, with the bench's URL
configuration (bench/api_urls.py: the product's URLs plus the peer endpoint). Nothing else differs."""

from flamingock_site.settings import *  # noqa: F403

ROOT_URLCONF = "bench.api_urls"
