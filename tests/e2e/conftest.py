from tests.projects import project  # noqa: F401  (fixture)
