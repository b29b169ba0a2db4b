"""The built-in filter kinds; importing this package registers them."""
