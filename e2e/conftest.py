pytest_plugins = ["infera_testenv.pytest_plugin"]
