# The LibTorch C++ adapter: built against the .venv torch in build-torch,
# its GoogleTest suites, the installed-tree consumer and the deployment
# example (Python export, C++ load_into, bitwise-equal output).
.PHONY: test-cpp
test-cpp: deps venv python-install
	scripts/check-cpp.sh build-torch

EXTRA_TESTS += test-cpp
