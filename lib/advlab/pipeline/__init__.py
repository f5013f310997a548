"""pipeline layer of advlab: see the package docstring (advlab/__init__.py)."""
