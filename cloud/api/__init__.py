"""HTTP routers, one module per area; create_app (cloud/app/asgi.py) mounts them."""
