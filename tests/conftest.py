pytest_plugins = ["tests.support.api_fixtures", "tests.support.s3"]
