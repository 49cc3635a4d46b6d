"""Thin HTTP routers: unpack the request, call a service, convert the result."""
