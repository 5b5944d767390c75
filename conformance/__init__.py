"""The weightshare conformance suite: the specification's requirements, proven by tests."""
