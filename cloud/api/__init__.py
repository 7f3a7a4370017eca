"""HTTP routers, one module per area; create_app (cloud/app.py) mounts them."""
