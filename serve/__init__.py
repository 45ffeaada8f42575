"""The Litestar edge of the routing service (see README.md); loaded by `smartrouter serve`."""
