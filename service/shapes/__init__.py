"""Every request and response shape of the admin API, declared once as msgspec Structs.

From each declaration come the validation of what is sent (unknown fields refused, types,
lengths and ranges checked: ``service.shapes.base.decode``), the JSON of what is answered
(``msgspec.json.encode``) and the OpenAPI component schemas (``service.openapi``). A shape's
name is its schema's title, so it is also the class name a generated client gets.
"""

from __future__ import annotations
