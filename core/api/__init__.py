"""REST API infrastructure every app's API builds on: authentication, role permissions, pagination, parsers,
errors, OpenAPI hooks, the token endpoint, the schema and docs URLs."""
