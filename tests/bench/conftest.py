def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs for minutes (deselect with -m 'not slow')")
